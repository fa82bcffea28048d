"""The face pipeline: image bytes to faces with boxes, landmarks, pose, quality and embeddings."""
