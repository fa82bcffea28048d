"""Offline evaluation: datasets, verification metrics, similarity calibration and the peer baseline.

Nothing here runs in the serving path; the product only imports `edge.similarity`.
"""
