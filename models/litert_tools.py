"""Precision variants, graph statistics, parity and latency of LiteRT models.

Everything is measured with ai_edge_litert, the interpreter the edge-face runtime uses, so the
numbers recorded in the manifest are the ones the service will see.
"""

import itertools
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")


def convert(converter: Any, precision: str, calibration: np.ndarray | None = None,
            float_ops: tuple[str, ...] = ()) -> bytes:
    """Convert with one of PRECISIONS.

    Full int8 keeps float32 input/output so callers don't change; ``float_ops`` (TFLite op
    names) stay float in it, through the quantisation debugger's selective quantisation.
    """
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision != "int8":
        return bytes(converter.convert())
    if calibration is None:
        raise ValueError("full int8 needs calibration chips")

    def representative() -> Iterator[list[np.ndarray]]:
        for chip in calibration:
            yield [chip[None].astype(np.float32)]

    converter.representative_dataset = representative
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    if not float_ops:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return bytes(converter.convert())
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: itertools.islice(representative(), 1),
        debug_options=options)
    return bytes(debugger.get_nondebug_quantized_model())


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
