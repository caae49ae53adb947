"""Write PyTorch's file formats from numpy arrays without torch: the files `torch_files` reads.

    write_torch_zip       `torch.save(obj, path)`, zip format as torch >= 2.4 writes it: stored
                          records under `<root>/` (by default the file name up to its first dot,
                          as torch names it): `data.pkl` (pickle protocol 2), `.format_version`
                          ("1"), `.storage_alignment` ("64"), `byteorder` ("little"), `data/<key>`
                          (raw little-endian storages, keys "0", "1", ... in order of first use),
                          `version` ("3\\n"), `.data/serialization_id`; each record's data starts
                          64-byte aligned, padded by an 'FB' extra field as torch's zip writer does.
    write_torch_legacy    `torch.save(obj, path, _use_new_zipfile_serialization=False)`, the
                          format of torch < 1.6
    write_network_pickle  `pickle.dump(obj, f)` (protocol 4) of EDM-style objects: tensors are
                          `_rebuild_tensor_v2(torch.storage._load_from_bytes(b), ...)` with each `b`
                          a legacy `torch.save` stream of one storage (shared ones written once).

Values: dict, OrderedDict, list, tuple, set, None, bool, int, float, str, bytes; numpy scalars
(written as numpy pickles them, e.g. EDM's `skip_scale`); `np.ndarray` (a tensor over its own
contiguous storage); `TensorView` (a tensor over a shared 1-D storage: element offset, shape,
element strides); `Parameter` (an `nn.Parameter`); and `torch_files.PickledObject`: kind
"persistent" is EDM's `_reconstruct_persistent_obj(meta)` with `source` as module_src, "object" is
NEWOBJ + BUILD (a ModuleDict, an argparse.Namespace), "call" a call of the global with `args` (a
torch.device).

The pickles are emitted opcode by opcode (`_Pickler`): the standard pickler imports every global it
names, and torch is not a dependency. Real torch reads these files with `torch.load`.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

from diffmem import atomic
from diffmem.errors import InputError
from diffmem.importers.torch_files import (LEGACY_MAGIC, LEGACY_PROTOCOL, STORAGE_DTYPES,
                                           PickledObject)

__all__ = ["Parameter", "TensorView", "write_network_pickle", "write_torch_legacy",
           "write_torch_zip"]


@dataclasses.dataclass(frozen=True, eq=False)
class TensorView:
    """A tensor over a (shared) 1-D `storage` array: element `offset`, `shape`, element `stride`."""

    storage: np.ndarray
    offset: int
    shape: tuple
    stride: tuple


@dataclasses.dataclass(frozen=True, eq=False)
class Parameter:
    """Write `data` (an array or a TensorView) as an `nn.Parameter` (requires_grad False)."""

    data: Any


@dataclasses.dataclass(frozen=True)
class _Global:
    name: str


@dataclasses.dataclass(frozen=True, eq=False)
class _StorageRef:
    array: np.ndarray


_SYS_INFO = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}
_STORAGE_OF = {np.dtype(v).str: k for k, v in STORAGE_DTYPES.items() if v != "bfloat16"}
_SCALAR = np.float64(0).__reduce__()[0]
_SCALAR_GLOBAL = f"{_SCALAR.__module__}.{_SCALAR.__name__}"  # as this numpy names it in pickles


def _storage_raw(flat: np.ndarray) -> tuple[str, bytes]:
    """(torch storage class, little-endian bytes) of a 1-D array."""
    if flat.dtype.name == "bfloat16":  # ml_dtypes
        return "BFloat16Storage", flat.view(np.uint16).astype("<u2").tobytes()
    little = flat.dtype.newbyteorder("<") if flat.dtype.itemsize > 1 else flat.dtype
    cls = _STORAGE_OF.get(np.dtype(little).newbyteorder("=").str)
    if cls is None:
        raise InputError(f"cannot write an array of dtype {flat.dtype} as a torch tensor")
    return cls, np.ascontiguousarray(flat, little).tobytes()


class _Pickler:
    """A small pickle writer (protocol 2 as torch.save, 4 as EDM's pickle.dump) that names torch's
    globals without importing them; `write_storage(self, flat)` emits a storage reference."""

    def __init__(self, protocol: int, write_storage: Callable | None = None):
        self.out, self.protocol, self.memo = bytearray(), protocol, {}
        self.write_storage, self.keep = write_storage, []

    def dumps(self, obj) -> bytes:
        self.out += bytes([0x80, self.protocol])
        self.save(obj)
        self.out += b"."
        return bytes(self.out)

    def memoize(self, key) -> None:
        self.memo[key] = i = len(self.memo)
        if self.protocol >= 4:
            self.out += b"\x94"
        else:
            self.out += b"q" + bytes([i]) if i < 256 else b"r" + i.to_bytes(4, "little")

    def recall(self, key) -> bool:
        i = self.memo.get(key)
        if i is not None:
            self.out += b"h" + bytes([i]) if i < 256 else b"j" + i.to_bytes(4, "little")
        return i is not None

    def global_(self, dotted: str) -> None:
        if self.recall(("global", dotted)):
            return
        module, _, name = dotted.rpartition(".")
        if self.protocol >= 4:
            self.save(module)
            self.save(name)
            self.out += b"\x93"
        else:
            self.out += b"c" + f"{module}\n{name}\n".encode()
        self.memoize(("global", dotted))

    def call(self, dotted: str, args: tuple, state=None) -> None:
        self.global_(dotted)
        self.save(tuple(args))
        self.out += b"R"
        if state is not None:
            self.save(state)
            self.out += b"b"

    def save(self, obj) -> None:
        out = self.out
        if obj is None or obj is True or obj is False:
            out += {None: b"N", True: b"\x88", False: b"\x89"}[obj]
        elif isinstance(obj, np.generic):  # before int/float: np.float64 is a float
            self.call(_SCALAR_GLOBAL, (obj.dtype, obj.tobytes()))
        elif isinstance(obj, np.dtype):
            _, args, state = obj.__reduce__()
            self.call("numpy.dtype", args, state)
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            out += b"G" + np.array(obj, ">f8").tobytes()
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, bytes):
            self._bytes(obj)
        elif isinstance(obj, tuple):
            if len(obj) > 3:
                out += b"("
            for v in obj:
                self.save(v)
            out += b")" if not obj else b"t" if len(obj) > 3 else bytes([0x84 + len(obj)])
        elif isinstance(obj, list):
            out += b"]"
            if obj:
                out += b"("
                for v in obj:
                    self.save(v)
                out += b"e"
        elif isinstance(obj, dict):
            if isinstance(obj, collections.OrderedDict):
                self.call("collections.OrderedDict", ())
            else:
                out += b"}"
            if obj:
                out += b"("
                for k, v in obj.items():
                    self.save(k)
                    self.save(v)
                out += b"u"
        elif isinstance(obj, (set, frozenset)):
            self._set(obj)
        elif isinstance(obj, (np.ndarray, TensorView)):
            self._tensor(obj)
        elif isinstance(obj, Parameter):
            self.call("torch._utils._rebuild_parameter",
                      (obj.data, False, collections.OrderedDict()))
        elif isinstance(obj, PickledObject):
            self._object(obj)
        elif isinstance(obj, _Global):
            self.global_(obj.name)
        elif isinstance(obj, _StorageRef):
            self.write_storage(self, obj.array)
        else:
            raise InputError(f"cannot write a {type(obj).__name__} into a torch file")

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + v.to_bytes(2, "little")
        elif -2**31 <= v < 2**31:
            self.out += b"J" + v.to_bytes(4, "little", signed=True)
        else:
            raw = v.to_bytes((v.bit_length() >> 3) + 1, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def _str(self, s: str) -> None:
        long = len(s) > 256  # long strings (EDM's module_src) are written once, then recalled
        if long and self.recall(("str", s)):
            return
        raw = s.encode("utf-8", "surrogatepass")
        if self.protocol >= 4 and len(raw) < 256:
            self.out += b"\x8c" + bytes([len(raw)]) + raw
        else:
            self.out += b"X" + len(raw).to_bytes(4, "little") + raw
        if long:
            self.memoize(("str", s))

    def _bytes(self, b: bytes) -> None:
        if self.protocol < 3:  # as Python's pickler: protocol 2 has no bytes opcode
            if b:
                self.call("_codecs.encode", (b.decode("latin1"), "latin1"))
            else:
                self.call("__builtin__.bytes", ())
        elif len(b) < 256:
            self.out += b"C" + bytes([len(b)]) + b
        else:
            self.out += b"B" + len(b).to_bytes(4, "little") + b

    def _set(self, s) -> None:
        if self.protocol < 4 or isinstance(s, frozenset):
            self.call(f"{'builtins' if self.protocol >= 4 else '__builtin__'}.{type(s).__name__}",
                      (list(s),))
        else:
            self.out += b"\x8f"  # EMPTY_SET
            if s:
                self.out += b"("
                for v in s:
                    self.save(v)
                self.out += b"\x90"  # ADDITEMS

    def _object(self, obj: PickledObject) -> None:
        if obj.kind == "persistent":
            meta = {"type": "class", "version": 6, "module_src": obj.source or "",
                    "class_name": obj.class_name, "state": obj.state}
            self.call("torch_utils.persistence._reconstruct_persistent_obj", (meta,))
        elif obj.kind == "call":
            self.call(obj.class_name, obj.args, obj.state)
        else:
            self.global_(obj.class_name)
            self.save(tuple(obj.args))
            self.out += b"\x81"  # NEWOBJ
            if obj.state is not None:
                self.save(obj.state)
                self.out += b"b"

    def _tensor(self, t) -> None:
        if isinstance(t, np.ndarray):
            flat = np.ascontiguousarray(t).reshape(-1)
            stride = tuple(int(np.prod(t.shape[i + 1:], dtype=np.int64)) for i in range(t.ndim))
            t = TensorView(flat, 0, t.shape, stride)
        self.keep.append(t.storage)  # alive until written: storage ids stay unique
        args = (_StorageRef(t.storage), int(t.offset), tuple(map(int, t.shape)),
                tuple(map(int, t.stride)), False, collections.OrderedDict())
        self.call("torch._utils._rebuild_tensor_v2", args)


def _legacy(obj, storage_itself: bool = False) -> bytes:
    """`torch.save(obj, f, _use_new_zipfile_serialization=False)`: magic, protocol and sys-info
    pickles, the object's pickle (storages as persistent ids), the sorted keys, then per storage
    an int64 element count and its bytes. `storage_itself`: obj is one 1-D storage array."""
    storages: dict[int, tuple[str, int, bytes]] = {}

    def legacy_storage(p: _Pickler, flat: np.ndarray) -> None:
        if id(flat) not in storages:
            storages[id(flat)] = (str(len(storages)), int(flat.size), *_storage_raw(flat))
        key, numel, cls, _ = storages[id(flat)]
        p.save(("storage", _Global(f"torch.{cls}"), key, "cpu", numel, None))
        p.out += b"Q"  # BINPERSID

    body = _Pickler(2, legacy_storage)
    if storage_itself:
        body.out += b"\x80\x02"
        legacy_storage(body, obj)
        body.out += b"."
    else:
        body.dumps(obj)
    keys = sorted(storages.values())
    return b"".join([_Pickler(2).dumps(LEGACY_MAGIC), _Pickler(2).dumps(LEGACY_PROTOCOL),
                     _Pickler(2).dumps(_SYS_INFO), bytes(body.out),
                     _Pickler(2).dumps([k for k, *_ in keys]),
                     *(numel.to_bytes(8, "little") + raw for _, numel, _, raw in keys)])


def _legacy_stream(flat: np.ndarray) -> bytes:
    """The bytes of `torch.storage._load_from_bytes`: a legacy `torch.save` of one storage."""
    return _legacy(flat, storage_itself=True)


def _bytes_storage(p: _Pickler, flat: np.ndarray) -> None:
    if not p.recall(("storage", id(flat))):
        p.call("torch.storage._load_from_bytes", (_legacy_stream(flat),))
        p.memoize(("storage", id(flat)))


def _write_bytes(path, data: bytes) -> str:
    def write_to(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic.write(str(path), write_to)


def write_network_pickle(path, obj) -> str:
    """Write `obj` as a plain protocol-4 pickle as EDM's `pickle.dump` of a snapshot does (see the
    module docstring for the values it takes). Returns the path."""
    return _write_bytes(path, _Pickler(4, _bytes_storage).dumps(obj))


def write_torch_legacy(path, obj) -> str:
    """Write `obj` as `torch.save(obj, path, _use_new_zipfile_serialization=False)` does (the
    format of torch < 1.6). Returns the path."""
    return _write_bytes(path, _legacy(obj))


def write_torch_zip(path, obj, root: str | None = None) -> str:
    """Write `obj` as `torch.save(obj, path)` does (zip format; records under `root`, by default
    the file name up to its first dot). Returns the path."""
    root = root or os.path.basename(str(path)).split(".")[0] or "archive"
    storages: dict[int, tuple[str, str, bytes]] = {}

    def zip_storage(p: _Pickler, flat: np.ndarray) -> None:
        if id(flat) not in storages:
            storages[id(flat)] = (str(len(storages)), *_storage_raw(flat))
        key, cls, _ = storages[id(flat)]
        p.save(("storage", _Global(f"torch.{cls}"), key, "cpu", int(flat.size)))
        p.out += b"Q"  # BINPERSID

    pkl = _Pickler(2, zip_storage).dumps(obj)
    records = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little")]
    records += [(f"data/{key}", raw) for key, _, raw in storages.values()]
    digest = hashlib.sha256(b"".join(r for _, r in records)).digest()
    serial = f"{int.from_bytes(digest[:8], 'little'):020d}{zlib.crc32(digest):020d}".encode()
    records += [("version", b"3\n"), (".data/serialization_id", serial)]

    def write_to(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            offset = 0
            for rec, data in records:
                info = zipfile.ZipInfo(f"{root}/{rec}", (1980, 1, 1, 0, 0, 0))
                pad = -(offset + 30 + len(info.filename) + 4) % 64
                info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
                zf.writestr(info, data)
                offset += 30 + len(info.filename) + len(info.extra) + len(data)
    return atomic.write(str(path), write_to)
