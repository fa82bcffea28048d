"""Rebuild dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) in TensorFlow.

No converter exists for dlib's DNN format, so this module reads dlib's own serialisation (the
rules of dlib/serialize.h, dlib/dnn/core.h and dlib/dnn/layers.h) and replays the network with
TF ops.  Tag and skip layers store nothing, so the layer order comes from ``anet_type`` in
dlib's examples/dnn_face_recognition_ex.cpp, spelled out below.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

# ---------------------------------------------------------------------------------------------
# Layer order, outermost (closest to the loss) first, exactly as dlib nests its templates.


@dataclass(frozen=True)
class Spec:
    """One layer of ``anet_type``: its kind, plus the tag id for tag/skip/add_prev layers."""

    kind: str
    tag: int = 0


def _block() -> list[Spec]:
    # block<N,affine,stride,SUB> = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUB>>>>>
    # (filter counts, strides and padding are read from the file)
    return [Spec("affine"), Spec("con"), Spec("relu"), Spec("affine"), Spec("con")]


def _ares() -> list[Spec]:
    # relu<add_prev1<block<N,affine,1,tag1<SUB>>>>
    return [Spec("relu"), Spec("add_prev", 1), *_block(), Spec("tag", 1)]


def _ares_down() -> list[Spec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUB>>>>>>>
    return [
        Spec("relu"), Spec("add_prev", 2), Spec("avg_pool"), Spec("skip", 1), Spec("tag", 2),
        *_block(), Spec("tag", 1),
    ]


ANET: list[Spec] = [
    Spec("fc"), Spec("avg_pool"),
    *_ares_down(),                                   # alevel0 (256)
    *_ares(), *_ares(), *_ares_down(),               # alevel1 (256)
    *_ares(), *_ares(), *_ares_down(),               # alevel2 (128)
    *_ares(), *_ares(), *_ares(), *_ares_down(),     # alevel3 (64)
    *_ares(), *_ares(), *_ares(),                    # alevel4 (32)
    Spec("max_pool"), Spec("relu"), Spec("affine"), Spec("con"),  # stem; con sits on the input
]

# ---------------------------------------------------------------------------------------------
# dlib's serialisation primitives.


class Reader:
    """Sequential reader of dlib's binary serialisation format."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int(self) -> int:
        """Variable-length integer: control byte (low nibble = byte count, 0x80 = negative)."""
        control = self.data[self.pos]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def float(self) -> float:
        """Scalar float: mantissa then exponent, both integers (dlib's float_details)."""
        if self.data[self.pos] & 0x70:
            raise ValueError(f"old ASCII float encoding at byte {self.pos}")
        mantissa = self.int()
        exponent = self.int()
        if exponent >= 32000:  # float_details::is_inf / is_nan markers
            return math.nan if exponent == 32002 else math.copysign(math.inf, mantissa or 1)
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        """Booleans are the ASCII characters '1' and '0'."""
        char = self.data[self.pos:self.pos + 1]
        self.pos += 1
        if char not in (b"0", b"1"):
            raise ValueError(f"bad bool {char!r} at byte {self.pos - 1}")
        return char == b"1"

    def str(self) -> str:
        """Strings are a varint length then the bytes."""
        size = self.int()
        text = self.data[self.pos:self.pos + size].decode("ascii")
        self.pos += size
        return text

    def tensor(self) -> np.ndarray:
        """resizable_tensor: version 2, dims (n, k, nr, nc), then raw little-endian float32."""
        self.expect_int(2, "tensor")
        dims = tuple(self.int() for _ in range(4))
        count = math.prod(dims)
        values = np.frombuffer(self.data, "<f4", count, self.pos).reshape(dims)
        self.pos += 4 * count
        return values

    def alias(self) -> tuple[int, ...]:
        """alias_tensor: version 1 and the dims of a view into a layer's params."""
        self.expect_int(1, "alias_tensor")
        return tuple(self.int() for _ in range(4))

    def expect_int(self, want: int, what: str) -> None:
        got = self.int()
        if got != want:
            raise ValueError(f"{what}: version {got}, expected {want} (byte {self.pos})")

    def expect_str(self, allowed: tuple[str, ...]) -> str:
        got = self.str()
        if got not in allowed:
            raise ValueError(f"layer version {got!r}, expected one of {allowed} (byte {self.pos})")
        return got


# ---------------------------------------------------------------------------------------------
# Layer details (each starts with its own version string).


@dataclass
class Layer:
    """Parsed settings and weights of one dlib layer (NCHW weights as dlib stores them)."""

    kind: str
    tag: int = 0
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    window: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


def _read_con(r: Reader, layer: Layer) -> None:
    r.expect_str(("con_4",))
    params = r.tensor().ravel()
    r.int()  # num_filters, implied by the filters alias below
    layer.window = (r.int(), r.int())
    layer.stride = (r.int(), r.int())
    layer.padding = (r.int(), r.int())
    filters = r.alias()
    r.alias()  # biases (1, num_filters): they follow the filters in params
    for _ in range(4):  # learning-rate / weight-decay multipliers
        r.float()
    size = math.prod(filters)
    layer.weights["filters"] = params[:size].reshape(filters)
    layer.weights["biases"] = params[size:size + filters[0]]


def _read_affine(r: Reader, layer: Layer) -> None:
    r.expect_str(("affine_",))
    params = r.tensor().ravel()
    gamma = math.prod(r.alias())
    r.alias()  # beta, same shape as gamma
    if r.int() != 0:  # layer_mode: 0 = CONV_MODE (per channel)
        raise ValueError("only per-channel affine layers are expected in this network")
    layer.weights["gamma"] = params[:gamma]
    layer.weights["beta"] = params[gamma:2 * gamma]


def _read_pool(r: Reader, layer: Layer) -> None:
    r.expect_str((f"{layer.kind}_2",))
    layer.window = (r.int(), r.int())
    layer.stride = (r.int(), r.int())
    layer.padding = (r.int(), r.int())


def _read_fc(r: Reader, layer: Layer) -> None:
    r.expect_str(("fc_2",))
    outputs, inputs = r.int(), r.int()
    params = r.tensor().ravel()
    r.alias()
    r.alias()
    if r.int() != 1:  # fc_bias_mode: 1 = FC_NO_BIAS
        raise ValueError("fc layer has a bias; anet_type says fc_no_bias")
    for _ in range(4):
        r.float()
    layer.weights["weights"] = params[:inputs * outputs].reshape(inputs, outputs)


_DETAILS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": lambda r, layer: r.expect_str(("relu_",)),
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "fc": _read_fc,
    "add_prev": lambda r, layer: r.expect_str(("add_prev_",)),
}


@dataclass
class DlibNet:
    """The parsed network: layers innermost first, plus the input layer's channel means."""

    layers: list[Layer]
    means: tuple[float, float, float]
    size: tuple[int, int]


def parse(path: Path) -> DlibNet:
    """Read the .dat file: loss record, the add_layer versions outside-in, then details inside-out."""
    r = Reader(path.read_bytes())
    r.expect_int(1, "add_loss_layer")
    r.expect_str(("loss_metric_2",))
    r.float()  # margin
    r.float()  # distance threshold
    for spec in ANET[:-1]:  # every wrapper writes its version before the layers beneath it
        r.expect_int(1 if spec.kind in ("tag", "skip") else 2, spec.kind)
    r.expect_int(3, "add_layer over the input")
    r.expect_str(("input_rgb_image_sized",))
    means = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers: list[Layer] = []
    for index, spec in enumerate(reversed(ANET)):
        layer = Layer(spec.kind, spec.tag)
        layers.append(layer)
        if spec.kind in ("tag", "skip"):  # tags and skips have no details
            continue
        _DETAILS[spec.kind](r, layer)
        for _ in range(3):  # setup_called, gradient_input_is_stale, output_and_gradient_disabled
            r.bool()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        r.tensor()  # params_grad (grad_final on the layer over the input)
        if index == 0:
            r.int()  # _sample_expansion_factor, only on the layer over the input
    if r.pos != len(r.data):
        raise ValueError(f"parsed {r.pos} of {len(r.data)} bytes")
    return DlibNet(layers, means, size)


# ---------------------------------------------------------------------------------------------
# The same network in TensorFlow (NHWC).


def _pad_to(x: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    """Zero-pad at the end of H, W and C, as dlib's tt::add treats a smaller operand."""
    h, w, c = x.shape[1:]
    if (h, w, c) == shape:
        return x
    return tf.pad(x, [[0, 0], [0, shape[0] - h], [0, shape[1] - w], [0, shape[2] - c]])


def _padding(layer: Layer) -> str:
    """Map dlib's explicit padding to TF's: it is either none or a centred kernel at stride 1."""
    if layer.padding == (0, 0):
        return "VALID"
    if layer.stride == (1, 1) and layer.padding == (layer.window[0] // 2, layer.window[1] // 2):
        return "SAME"
    raise ValueError(f"unsupported padding {layer.padding} for window {layer.window}")


def forward(net: DlibNet, image: tf.Tensor) -> tf.Tensor:
    """Run the network on float RGB pixels in 0..255, NHWC; returns dlib's raw 128-d descriptor."""
    x = (image - tf.constant(net.means, tf.float32)) / 256.0  # dlib's input_rgb_image_sized
    tags: dict[int, tf.Tensor] = {}
    for layer in net.layers:
        w = layer.weights
        if layer.kind == "con":
            kernel = np.ascontiguousarray(w["filters"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
            x = tf.nn.conv2d(x, kernel, layer.stride, _padding(layer)) + w["biases"]
        elif layer.kind == "affine":
            x = x * w["gamma"] + w["beta"]
        elif layer.kind == "relu":
            x = tf.nn.relu(x)
        elif layer.kind in ("max_pool", "avg_pool") and layer.window == (0, 0):
            x = tf.reduce_mean(x, axis=[1, 2])  # avg_pool_everything
        elif layer.kind in ("max_pool", "avg_pool"):
            pool = tf.nn.max_pool2d if layer.kind == "max_pool" else tf.nn.avg_pool2d
            x = pool(x, layer.window, layer.stride, _padding(layer))
        elif layer.kind == "fc":
            x = tf.matmul(x, w["weights"])
        elif layer.kind == "tag":
            tags[layer.tag] = x
        elif layer.kind == "skip":
            x = tags[layer.tag]
        elif layer.kind == "add_prev":
            other = tags[layer.tag]
            shape = tuple(max(a, b) for a, b in zip(x.shape[1:], other.shape[1:], strict=True))
            x = _pad_to(x, shape) + _pad_to(other, shape)
    return x


def converter(net: DlibNet) -> tf.lite.TFLiteConverter:
    """TF2 converter for the rebuilt network on one float32 0..255 RGB chip (normalised in graph)."""
    module = tf.Module()
    module.embed = tf.function(
        lambda image: forward(net, image),
        input_signature=[tf.TensorSpec([1, *net.size, 3], tf.float32, name="image")],
    )
    return tf.lite.TFLiteConverter.from_concrete_functions([module.embed.get_concrete_function()], module)
