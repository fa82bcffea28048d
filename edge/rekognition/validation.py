"""Validate a Rekognition request against botocore's model of the service, as AWS's front end does.

Clients check only minimums (botocore validates `min`, never `max`, `pattern` or `enum`), so a bad
CollectionId, a threshold of 101 or an 8 MB image all reach the server.  Every shape, length,
range, pattern and enum comes from the model AWS publishes, never from rules copied by hand, so
all 75 operations are covered and a botocore upgrade brings new members with it.

Two phases, like Coral (AWS's service framework): deserialising the JSON fails fast on the first
value of the wrong type; the constraint check then reports every violation at once, worded as AWS
words them, e.g. ``1 validation error detected: Value '101.0' at 'faceMatchThreshold' failed to
satisfy constraint: Member must have value less than or equal to 100``.
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import sys
import unicodedata
from collections.abc import Iterable
from functools import cache
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

from edge.errors import InvalidParameterException, SerializationException, ValidationException

_SCALARS = frozenset({"string", "integer", "long", "float", "double", "boolean", "blob", "timestamp"})
_INTEGER_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# awsJson1_1 sends non-finite floats as these strings (botocore's serializer does too).
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TYPE_NAMES = {
    "string": "a String",
    "integer": "an Integer",
    "long": "a Long",
    "float": "a Float",
    "double": "a Double",
    "boolean": "a Boolean",
    "blob": "a Blob",
    "timestamp": "a Timestamp",
    "structure": "a Structure",
    "list": "a List",
    "map": "a Map",
}
# Coral's names for the JSON token it found where a scalar of another type was expected.
_TOKENS: dict[type, str] = {bool: "BOOLEAN_VALUE", str: "STRING_VALUE"}
_RENDER_LIMIT = 200  # echo at most this much of a bad value: a 4,097-id list would make a 160 kB message
# Rekognition's own wording for an Image that has neither or both sources.
IMAGE_SOURCE_MESSAGE = "Requested image should either contain bytes or s3 object."


def validate_request(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` (the parsed JSON body) against `operation`'s input shape and return them decoded.

    Blobs come back as raw `bytes` (so `Image.Bytes` is the image itself), integers as `int`, floats
    as `float`; members the model does not know are dropped and defaults are not filled, because
    defaults are each operation's business.  `operation` must be one of the model's operation names.

    Raises `SerializationException` for a wrong JSON type or bad base64, `ValidationException`
    for broken model constraints (an image over 5 MB among them), as AWS's front end does, and
    `InvalidParameterException` for an Image without exactly one source.
    """
    walker = _Walker()
    shape = _service_model().operation_model(operation).input_shape
    if shape is None:
        raise ValueError(f"{operation} takes no input in Rekognition's model")
    result = walker.walk(params, shape, "")
    if walker.violations:
        count = len(walker.violations)
        noun = "error" if count == 1 else "errors"
        raise ValidationException(f"{count} validation {noun} detected: " + "; ".join(walker.violations))
    # The one-source rule is the service's, not the model's, so Rekognition applies it after the model's.
    for image in walker.images:
        check_image(image)
    return result


@cache
def idempotency_token(operation: str) -> str | None:
    """The member that carries `operation`'s idempotency token (ClientRequestToken), if it has one."""
    shape = _service_model().operation_model(operation).input_shape
    members = shape.members.items() if shape is not None else ()
    return next((name for name, member in members if member.metadata.get("idempotencyToken")), None)


def check_image(image: dict[str, Any]) -> None:
    """Require exactly one of `Bytes` or `S3Object`, the rule Rekognition's model cannot express."""
    if (image.get("Bytes") is None) == (image.get("S3Object") is None):
        raise InvalidParameterException(IMAGE_SOURCE_MESSAGE)


@cache
def _service_model() -> ServiceModel:
    """Loaded once: parsing the model takes tens of milliseconds, and it never changes in a process."""
    return botocore.session.get_session().get_service_model("rekognition")


class _Walker:
    """One request's walk: converts values, raises on the first type error, collects violations."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.images: list[dict[str, Any]] = []

    def walk(self, value: Any, shape: Shape, path: str) -> Any:
        result: Any
        if isinstance(shape, StructureShape):
            return self._structure(value, shape, path)
        if isinstance(shape, ListShape):
            if not isinstance(value, list):
                raise _type_error(value, shape, path)
            result = self._items(value, [f"{path}.{i}.member" for i in range(1, len(value) + 1)], shape.member, path)
        elif isinstance(shape, MapShape):
            if not isinstance(value, dict):
                raise _type_error(value, shape, path)
            keys = self._items(list(value), [path] * len(value), shape.key, path, "Map keys", whole=value)
            paths = [f"{path}.{key}" for key in value]
            values = self._items(list(value.values()), paths, shape.value, path, "Map value", whole=value)
            result = dict(zip(keys, values, strict=True))
        else:
            result = _scalar(value, shape, path)
        self.violations.extend(_violation(result, path, failed) for failed in _constraints(result, shape))
        return result

    def _structure(self, value: Any, shape: StructureShape, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _type_error(value, shape, path)
        # Members the model does not know are skipped, not refused: Coral's JSON deserialiser (like
        # every AWS SDK's) ignores unknown fields, so a client on a newer model than ours still works
        # while the features it asks for are absent.  Dropping them keeps unchecked data out of the
        # operations.  JSON null is treated as absent, as Coral does.
        result: dict[str, Any] = {}
        for name, member in shape.members.items():
            member_path = f"{path}.{_camel(name)}" if path else _camel(name)
            if value.get(name) is None:
                if name in shape.required_members:
                    self.violations.append(
                        f"Value null at '{member_path}' failed to satisfy constraint: Member must not be null"
                    )
                continue
            result[name] = self.walk(value[name], member, member_path)
        if shape.name == "Image":
            self.images.append(result)
        return result

    def _items(
        self, values: list[Any], paths: list[str], shape: Shape, path: str, label: str = "Member", whole: Any = None
    ) -> list[Any]:
        """Members of a list or map: Coral reports scalars as one violation for the whole container."""
        if shape.type_name not in _SCALARS:
            return [self.walk(value, shape, item_path) for value, item_path in zip(values, paths, strict=True)]
        items = [_scalar(value, shape, item_path) for value, item_path in zip(values, paths, strict=True)]
        failed = list(dict.fromkeys(failure for item in items for failure in _constraints(item, shape)))
        if failed:
            constraint = f"{label} must satisfy constraint: [{', '.join(failed)}]"
            self.violations.append(_violation(items if whole is None else whole, path, constraint))
        return items


def _scalar(value: Any, shape: Shape, path: str) -> Any:
    """Convert one JSON scalar to its model type, or raise the deserialiser's type error."""
    kind = shape.type_name
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if (kind == "string" and isinstance(value, str)) or (kind == "boolean" and isinstance(value, bool)):
        return value
    if kind == "blob" and isinstance(value, str):
        return _blob(value, shape, path)
    if kind in _INTEGER_RANGES and is_number:
        # JSON has one number type, so 5.0 is the integer 5; 5.5 or 2**31 is no Integer at all.
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        low, high = _INTEGER_RANGES[kind]
        if isinstance(number, int) and low <= number <= high:
            return number
    if kind in ("float", "double"):
        if isinstance(value, str) and value in _NON_FINITE:
            return _NON_FINITE[value]
        if is_number:
            with contextlib.suppress(OverflowError):  # an integer beyond any float is no Float
                return float(value)  # the CLI sends 90.0, boto3 may send 95: both are floats here
    if kind == "timestamp" and is_number:
        return value  # awsJson1_1 sends timestamps as epoch seconds
    raise _type_error(value, shape, path)


def _blob(value: str, shape: Shape, path: str) -> bytes:
    """Decode a base64 blob strictly: a stray character or bad padding is the client's error."""
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII string
        raise _deserialization_error(f"Invalid base64 at '{path}': {exc}") from None
    # An image over the model's 5 MB cap is an ordinary length violation, as AWS reports it
    # ("Value 'java.nio.HeapByteBuffer[...]' at 'image.bytes' ... length less than or equal to 5242880").
    return data


def _constraints(value: Any, shape: Shape) -> list[str]:
    """The model constraints `value` breaks, each in Coral's words."""
    meta = shape.metadata
    kind = shape.type_name
    if kind in ("string", "blob", "list", "map"):
        measure, size = "length", len(value)
    elif kind in ("integer", "long", "float", "double"):
        measure, size = "value", value
    else:
        return []
    failed = []
    # Written as `not size >= minimum` so that NaN fails the range instead of slipping through it.
    if "min" in meta and not size >= meta["min"]:
        failed.append(f"Member must have {measure} greater than or equal to {meta['min']}")
    if "max" in meta and not size <= meta["max"]:
        failed.append(f"Member must have {measure} less than or equal to {meta['max']}")
    if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
        failed.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    if meta.get("enum") and value not in meta["enum"]:
        failed.append(f"Member must satisfy enum value set: [{', '.join(meta['enum'])}]")
    return failed


def _violation(value: Any, path: str, constraint: str) -> str:
    """One violation in Coral's sentence, quoting a prefix of the value so huge lists stay readable."""
    text = _java_string(value)
    if len(text) > _RENDER_LIMIT:
        text = text[:_RENDER_LIMIT] + "..."
    return f"Value '{text}' at '{path}' failed to satisfy constraint: {constraint}"


def _java_string(value: Any) -> str:
    """The value as Java's toString() shows it, since that is what AWS's messages quote."""
    if isinstance(value, bytes):
        return f"java.nio.HeapByteBuffer[pos=0 lim={len(value)} cap={len(value)}]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return "[" + ", ".join(_java_string(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}={_java_string(item)}" for key, item in value.items()) + "}"
    return str(value)


def _type_error(value: Any, shape: Shape, path: str) -> SerializationException:
    """What Coral's JSON deserialiser says about a value of the wrong JSON type, plus where it was."""
    if isinstance(value, dict):
        found = "Start of structure or map found where not expected"
    elif isinstance(value, list):
        found = "Start of list found where not expected"
    else:
        token = "NULL_VALUE" if value is None else _TOKENS.get(type(value), "NUMBER_VALUE")
        found = f"{token} can not be converted to {_TYPE_NAMES[shape.type_name]}"
    return _deserialization_error(f"{found} at '{path}'" if path else f"{found} (request body)")


def _deserialization_error(message: str) -> SerializationException:
    """AWS answers a body it cannot deserialise with SerializationException (HTTP 400)."""
    return SerializationException(message)


def _camel(name: str) -> str:
    """Member name as Coral's messages spell it: CollectionId -> collectionId, S3Object -> s3Object."""
    return name[:1].lower() + name[1:]


@cache
def _pattern(java: str) -> re.Pattern[str]:
    """Compile a model pattern once.  Coral uses Java's `matches()`, so callers use `fullmatch`.

    re.ASCII because Java's \\d, \\w and \\s are ASCII-only (no UNICODE_CHARACTER_CLASS).
    """
    return re.compile(_translate_java(java), re.ASCII)


_JAVA_PROPERTY = re.compile(r"\\p\{(\w+)\}")


def _translate_java(java: str) -> str:
    """Rewrite Java's \\p{Category} classes (TagKey and TagValue use L, Z and N), which Python's re lacks.

    The rest of the model's Java regexes mean the same in Python; the test compiles every one of them.
    """
    if "\\p{" not in java:
        return java
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(java):
        match = _JAVA_PROPERTY.match(java, i)
        if match:
            ranges = _category_ranges(match[1])
            out.append(ranges if in_class else f"[{ranges}]")
            i = match.end()
            continue
        step = 2 if java[i] == "\\" else 1
        if java[i] in "[]":
            in_class = java[i] == "["
        out.append(java[i : i + step])
        i += step
    return "".join(out)


@cache
def _category_ranges(category: str) -> str:
    """Every code point of a Unicode general category (`L`, `Lu`, ...), as character-class ranges."""
    spans = []
    if category.isalpha() and len(category) <= 2:
        spans = _runs(cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith(category))
    if not spans:
        raise ValueError(f"unsupported Java character property \\p{{{category}}}")
    return "".join(rf"\U{first:08x}" if first == last else rf"\U{first:08x}-\U{last:08x}" for first, last in spans)


def _runs(code_points: Iterable[int]) -> list[tuple[int, int]]:
    """Collapse ascending code points into (first, last) runs."""
    spans: list[tuple[int, int]] = []
    for cp in code_points:
        if spans and spans[-1][1] == cp - 1:
            spans[-1] = (spans[-1][0], cp)
        else:
            spans.append((cp, cp))
    return spans
