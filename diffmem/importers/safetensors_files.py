"""Read and write safetensors files (diffusers' `diffusion_pytorch_model.safetensors`, ...).

Format: an 8-byte little-endian header length N; N bytes of UTF-8 JSON,

    {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [d0, ...], "data_offsets": [b, e]}}

padded with spaces to a multiple of 8; then the data: each tensor's C-order little-endian bytes at
[b, e) from the data's start. Data only: nothing in such a file can run.

Why not `safetensors.numpy`: the format is a few lines of numpy, and this reader (1) needs no
dependency, (2) makes every problem one line naming the file (the package raises bare
`SafetensorError`s), (3) reads BF16 tensors, as float32, which numpy has no dtype for, and (4) is
the same code on every machine. `write_safetensors` writes what the package writes, byte for byte
(compact JSON, `__metadata__` first, tensors sorted by descending dtype then name), so files made
here load with `safetensors` / diffusers. The package is in the `import` and `test` extras only
so that the tests can check both directions against it.
"""
from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from diffmem import atomic
from diffmem.errors import InputError, MissingInputError

__all__ = ["SAFETENSORS_DTYPES", "parse_safetensors", "read_safetensors",
           "read_safetensors_metadata", "write_safetensors"]

# safetensors dtype -> numpy dtype of its little-endian elements, in safetensors' own dtype order
# (the writer sorts by it, largest first). "BF16" elements are uint16 bits, read as float32.
SAFETENSORS_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2",
                      "BF16": "<u2", "I32": "<i4", "U32": "<u4", "F32": "<f4", "F64": "<f8",
                      "I64": "<i8", "U64": "<u8"}
_RANK = {k: i for i, k in enumerate(SAFETENSORS_DTYPES)}
_CODE = {np.dtype(v).newbyteorder("=").str: k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100_000_000


def _bad(name: str, what: str) -> InputError:
    return InputError(f"{name}: not a valid safetensors file ({what}); download or export it again")


def _header(data: bytes, name: str) -> tuple[dict, int]:
    if len(data) < 8:
        raise _bad(name, f"{len(data)} bytes, shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > min(_MAX_HEADER, len(data) - 8):
        raise _bad(name, f"header length {n} exceeds the file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(name, f"its header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise _bad(name, "its header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(name, "__metadata__ is not a map of strings")
    return header, 8 + n


def parse_safetensors(data: bytes, name: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict]:
    """({tensor name: array (native order, BF16 as float32, file order)}, metadata) of a file's
    bytes; `name` is only for error messages."""
    header, start = _header(data, name)
    body = memoryview(data)[start:]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        ok = (isinstance(info, dict) and info.get("dtype") in SAFETENSORS_DTYPES
              and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)
              and len(info["data_offsets"]) == 2
              and all(type(v) is int and v >= 0 for v in info["shape"] + info["data_offsets"]))
        if not ok:
            raise _bad(name, f"tensor {key!r} has the entry {info!r}")
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        (b, e), shape = info["data_offsets"], tuple(info["shape"])
        if not b <= e <= len(body) or e - b != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise _bad(name, f"tensor {key!r}: offsets {[b, e]} do not fit shape {list(shape)} of "
                             f"{info['dtype']} in {len(body)} data bytes")
        flat = np.frombuffer(body[b:e], dtype)
        if info["dtype"] == "BF16":
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        else:
            flat = flat.astype(dtype.newbyteorder("="))  # a writable native-order copy
        out[key] = flat.reshape(shape)
    return out, dict(header.get("__metadata__", {}))


def _read(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise MissingInputError(f"{path}: no such file; check the path") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e})") from e


def read_safetensors(path) -> dict[str, np.ndarray]:
    """{tensor name: array} of a safetensors file (see `parse_safetensors`)."""
    return parse_safetensors(_read(path), str(path))[0]


def read_safetensors_metadata(path) -> dict[str, str]:
    """The header's `__metadata__` ({} when absent), e.g. {'format': 'pt'} from diffusers."""
    return parse_safetensors(_read(path), str(path))[1]


def _code(arr: np.ndarray, key: str) -> str:
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return "BF16"
    code = _CODE.get(arr.dtype.newbyteorder("=").str)
    if code is None:
        raise InputError(f"cannot write tensor {key!r} of dtype {arr.dtype} to safetensors")
    return code


def write_safetensors(path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> str:
    """Write {name: array} (numeric numpy arrays; ml_dtypes bfloat16 as BF16) with optional string
    metadata, exactly as `safetensors.numpy.save_file` lays the file out. Returns the path."""
    items = []
    for key, arr in tensors.items():
        if not isinstance(key, str) or key == "__metadata__":
            raise InputError(f"cannot write a safetensors tensor named {key!r}")
        arr = np.asarray(arr)
        code = _code(arr, key)
        raw = arr.view(np.uint16) if code == "BF16" else arr
        raw = np.ascontiguousarray(raw, raw.dtype.newbyteorder("<") if raw.dtype.itemsize > 1
                                   else raw.dtype).tobytes()
        items.append((key, code, list(arr.shape), raw))
    items.sort(key=lambda t: (-_RANK[t[1]], t[0]))
    header: dict = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise InputError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for key, code, shape, raw in items:
        header[key] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    blob = len(text).to_bytes(8, "little") + text + b"".join(t[3] for t in items)

    def write_to(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(blob)
    return atomic.write(str(path), write_to)
