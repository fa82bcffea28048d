"""Precision variants, graph statistics, parity and latency of LiteRT models.

Everything is measured with ai_edge_litert, the interpreter the edge-face runtime uses, so the
numbers recorded in the manifest are the ones the service will see.
"""

import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import convert as tflite_convert
from tensorflow.lite.tools import flatbuffer_utils

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
RANGE_BINS = 4096  # histogram resolution of each activation range
RANGE_FRACTIONS = np.linspace(0.2, 1.0, 81)  # candidate int8 ranges, as fractions of min..max
# Clipping error counts this many times over rounding error: rounding noise is independent and
# averages out in the next layer's sums, clipping cuts the same large activations every time.
# 3 beat 2 and 5 (and 1, plain least squares, by more) on FaceNet's worst cosine over the parity
# crops and 96 other faces-dev crops, across three draws of calibration chips.
CLIP_WEIGHT = 3.0


def convert(converter: Any, precision: str, calibration: np.ndarray | None = None,
            float_ops: tuple[str, ...] = (), float_nodes: tuple[str, ...] = ()) -> bytes:
    """Convert with one of PRECISIONS.

    Full int8 keeps float32 input/output so callers don't change. Its activation ranges come
    from ``calibrated_ranges``; ``float_ops`` (TFLite op names) and ``float_nodes`` (TF node
    names, the first part of a TFLite tensor name) stay float, through selective quantisation.
    """
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision != "int8":
        return bytes(converter.convert())
    if calibration is None:
        raise ValueError("full int8 needs calibration chips")
    # The converter's own calibration only marks the tensors to quantise: one chip does that.
    converter.representative_dataset = lambda: iter([[calibration[:1].astype(np.float32)]])
    converter._experimental_calibrate_only = True
    model = calibrated_ranges(bytes(converter.convert()), calibration)
    tensors = flatbuffer_utils.read_model_from_bytearray(bytearray(model)).subgraphs[0].tensors
    names = [t.name.decode() for t in tensors]
    missing = set(float_nodes) - {n.split(";")[0] for n in names}
    if missing:
        raise ValueError(f"float_nodes not in the graph: {sorted(missing)}")
    denied = [n for n in names if n.split(";")[0] in float_nodes]
    # What QuantizationDebugger.get_nondebug_quantized_model runs, without its debug model.
    return bytes(tflite_convert.mlir_quantize(model, denylisted_ops=list(float_ops),
                                              denylisted_nodes=denied))


def calibrated_ranges(model: bytes, calibration: np.ndarray) -> bytes:
    """Give each calibrated tensor of ``model`` the int8 range with the least error on the chips.

    TF's calibrator logs an op's inputs again after the op has run. Where the memory planner
    lets an op write its output over an input, as every residual ADD does, that input gets the
    output's range (tensorflow/tensorflow#127842): FaceNet's residual branches were quantised
    with steps ~20x too coarse. So the ranges are measured here with every tensor preserved:
    min..max (with 0) in a first pass, a histogram over it in a second. Each range is then
    shrunk to the fraction with the least squared quantisation error (rounding against
    clipping), because the ReLU outputs of a deep net are long-tailed.
    """
    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    tensors = flat.subgraphs[0].tensors
    calibrated = [i for i, t in enumerate(tensors)
                  if t.quantization is not None and t.quantization.min is not None
                  and len(t.quantization.min)]
    low = dict.fromkeys(calibrated, 0.0)
    high = dict.fromkeys(calibrated, 0.0)
    for values in activations(model, calibration, calibrated):
        for i, x in values.items():
            low[i], high[i] = min(low[i], float(x.min())), max(high[i], float(x.max()))
    counts = {i: np.zeros(RANGE_BINS, np.int64) for i in calibrated}
    for values in activations(model, calibration, calibrated):
        for i, x in values.items():
            if high[i] > low[i]:
                bins = ((x - low[i]) * (RANGE_BINS / (high[i] - low[i]))).astype(np.int64)
                counts[i] += np.bincount(np.minimum(bins, RANGE_BINS - 1), minlength=RANGE_BINS)
    for i in calibrated:
        fraction = least_error_fraction(counts[i], low[i], high[i])
        tensors[i].quantization.min = np.array([low[i] * fraction], np.float32)
        tensors[i].quantization.max = np.array([high[i] * fraction], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def activations(model: bytes, calibration: np.ndarray, tensors: list[int]) -> Iterator[dict[int, np.ndarray]]:
    """The flattened values of ``tensors`` for each chip; preserved, so no buffer is shared."""
    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    for chip in calibration:
        interpreter.set_tensor(source, chip[None].astype(np.float32))
        interpreter.invoke()
        yield {i: interpreter.get_tensor(i).ravel() for i in tensors}


def least_error_fraction(counts: np.ndarray, low: float, high: float) -> float:
    """The RANGE_FRACTIONS entry whose 256-level grid over fraction x (low..high) fits best.

    Values inside the grid cost step^2/12 each; clipped ones CLIP_WEIGHT x their squared
    distance to the edge.
    """
    if high == low:
        return 1.0
    centres = low + (np.arange(len(counts)) + 0.5) * (high - low) / len(counts)
    errors = []
    for fraction in RANGE_FRACTIONS:
        lo, hi = low * fraction, high * fraction
        clipped = np.clip(centres, lo, hi)
        inside = counts[clipped == centres].sum()
        errors.append(((hi - lo) / 255) ** 2 / 12 * inside
                      + CLIP_WEIGHT * float(counts @ (centres - clipped) ** 2))
    return float(RANGE_FRACTIONS[int(np.argmin(errors))])


def float_op_counts(model: bytes) -> dict[str, int]:
    """Compute ops of a quantised model that still run in float, by TFLite op name."""
    interpreter = Interpreter(model_content=model)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    ops = [op["op_name"] for op in interpreter._get_ops_details()
           if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and dtypes[op["outputs"][0]] == np.float32]
    return dict(sorted(Counter(ops).items()))


def graph_stats(model: bytes) -> tuple[float, int]:
    """(GMAC, parameters) of a float model, counted from its conv/FC ops and constant tensors."""
    interpreter = Interpreter(model_content=model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    produced = {int(i) for op in interpreter._get_ops_details() for i in op["outputs"]}
    graph_inputs = {t["index"] for t in interpreter.get_input_details()}
    macs = 0
    constants: set[int] = set()
    for op in interpreter._get_ops_details():
        inputs = [int(i) for i in op["inputs"] if i >= 0]
        constants.update(i for i in inputs if i not in produced and i not in graph_inputs)
        out = int(np.prod(tensors[int(op["outputs"][0])]["shape"]))
        weights = tensors[inputs[1]]["shape"] if len(inputs) > 1 else None
        if op["op_name"] == "CONV_2D":  # weights [O, H, W, I]
            macs += out * int(np.prod(weights[1:]))
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # weights [1, H, W, C]
            macs += out * int(np.prod(weights[1:3]))
        elif op["op_name"] == "FULLY_CONNECTED":  # weights [O, I]
            macs += out * int(weights[1])
    params = sum(int(np.prod(tensors[i]["shape"])) for i in constants if tensors[i]["shape"].size)
    return macs / 1e9, params


def run_model(model: bytes | str, inputs: np.ndarray, threads: int = 2) -> np.ndarray:
    """Output of a one-input, one-output model for each row of ``inputs``, run at batch 1."""
    interpreter = (Interpreter(model_path=model, num_threads=threads) if isinstance(model, str)
                   else Interpreter(model_content=model, num_threads=threads))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    sink = interpreter.get_output_details()[0]["index"]
    outputs = []
    for x in inputs:
        interpreter.set_tensor(source, x[None].astype(np.float32))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(sink)[0].copy())
    return np.stack(outputs)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def parity(model: bytes, inputs: np.ndarray, reference: np.ndarray) -> dict[str, float | int]:
    """Min/mean cosine of the model's outputs against the reference embeddings."""
    c = cosines(run_model(model, inputs), reference)
    return {"min_cosine": round(float(c.min()), 6), "mean_cosine": round(float(c.mean()), 6), "n": len(c)}


def latency_ms(path: str, runs: int = 50, threads: int = 1) -> float:
    """Median wall time of one invoke on a random chip, after a warm-up run."""
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    interpreter.set_tensor(detail["index"], rng.uniform(0, 255, detail["shape"]).astype(np.float32))
    interpreter.invoke()
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
