"""The wire format of the policy server: numpy arrays without pickle.

A binary message is ``b"DCT1"``, a little-endian uint32 header length, a UTF-8 JSON header, then the raw
array bytes. The header's ``arrays`` list names each array with its ``dtype``, ``shape``, ``offset`` and
``nbytes`` (offsets relative to the end of the header). Text messages are plain JSON headers with no arrays.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MAGIC = b"DCT1"
DTYPES = ("float32", "float64", "int32", "int64", "uint8", "bool")
MAX_DIMS = 8


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One binary message: ``header`` plus ``arrays`` (C-contiguous, little-endian copies)."""
    specs, blobs, offset = [], [], 0
    for name, value in (arrays or {}).items():
        arr = np.ascontiguousarray(value)
        if arr.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r} has dtype {arr.dtype}; supported: {DTYPES}")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        specs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset,
                      "nbytes": len(blob)})  # fmt: skip
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps({**header, "arrays": specs}, allow_nan=False).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


def decode(message: bytes | str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a message (binary or JSON text) into its header and arrays; ValueError says what is wrong."""
    if isinstance(message, str):
        return _header(message.encode()), {}
    data = memoryview(message)
    if len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise ValueError(f"binary message must start with {MAGIC!r} and a header length")
    (length,) = struct.unpack("<I", data[4:8])
    if 8 + length > len(data):
        raise ValueError(f"header length {length} exceeds the message ({len(data)} bytes)")
    header = _header(bytes(data[8 : 8 + length]))
    payload = data[8 + length :]
    arrays = {}
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ValueError("header 'arrays' must be a list")
    for spec in specs:
        name, arr = _array(spec, payload)
        arrays[name] = arr
    return header, arrays


def _header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"message header is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise ValueError(f"message header must be a JSON object, got {type(header).__name__}")
    return header


def _array(spec: Any, payload: memoryview) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict):
        raise ValueError("each entry of 'arrays' must be an object with name, dtype, shape, offset, nbytes")
    name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
    offset, nbytes = spec.get("offset"), spec.get("nbytes")
    if not isinstance(name, str):
        raise ValueError(f"array name must be a string, got {name!r}")
    if dtype not in DTYPES:
        raise ValueError(f"array {name!r} has dtype {dtype!r}; supported: {DTYPES}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ValueError(f"array {name!r} shape must be a list of <= {MAX_DIMS} integers >= 0, got {shape!r}")
    if not all(isinstance(v, int) and v >= 0 for v in (offset, nbytes)):
        raise ValueError(f"array {name!r} needs integer offset and nbytes >= 0")
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes != expected:
        raise ValueError(f"array {name!r}: nbytes {nbytes} does not match dtype {dtype} and shape {shape}")
    if offset + nbytes > len(payload):
        raise ValueError(f"array {name!r} runs past the end of the message")
    arr = np.frombuffer(payload[offset : offset + nbytes], dtype=np.dtype(dtype).newbyteorder("<"))
    return name, arr.reshape(shape).astype(dtype)
