"""Rekognition's face operations, held to AWS's own API model."""
