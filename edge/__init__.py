"""edge-face: offline face search speaking the AWS Rekognition face API."""
