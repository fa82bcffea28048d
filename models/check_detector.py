"""Check that a BlazeFace .tflite loads in MediaPipe Tasks' FaceDetector and count faces per image.

``import mediapipe`` pulls in matplotlib (drawing utils), which edge-face leaves out.  The task
modules themselves don't need it, so empty package modules pointing at the installed folders
stand in for the package __init__ files.  Works in the build env and in the service's venv:

    python models/check_detector.py MODEL.tflite IMAGE...
"""

import argparse
import importlib.util
import sys
import types
from pathlib import Path

_SKELETON = ("mediapipe", "mediapipe.tasks", "mediapipe.tasks.python", "mediapipe.tasks.python.vision")


def _register_skeleton() -> None:
    if "mediapipe" in sys.modules:  # already registered (or really imported)
        return
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("mediapipe")
    root = Path(spec.submodule_search_locations[0])
    for name in _SKELETON:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module


def count_faces(model: Path, images: list[Path]) -> list[int]:
    """Faces FaceDetector finds (default options) in each image, using ``model``."""
    _register_skeleton()
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import face_detector
    from mediapipe.tasks.python.vision.core.image import Image

    options = face_detector.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model)))
    with face_detector.FaceDetector.create_from_options(options) as detector:
        return [len(detector.detect(Image.create_from_file(str(image))).detections) for image in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args()
    for image, faces in zip(args.images, count_faces(args.model, args.images), strict=True):
        print(f"{faces}\t{image}")


if __name__ == "__main__":
    main()
