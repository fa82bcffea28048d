"""The daemon: Rekognition's JSON 1.1 wire protocol over HTTP(S), SigV4-authenticated, for the real clients."""
