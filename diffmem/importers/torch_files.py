"""Read PyTorch's files without torch and without running anything stored in them.

Formats (`diffmem.importers.torch_writers` writes each of them as torch does):

    torch zip (`torch.save`, torch >= 1.6): uncompressed records under one root folder of any name
        (`archive/`, `2/`, the file's stem). `data.pkl` is a pickle whose tensors are
        `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` and
        whose storages are persistent ids `('storage', torch.FloatStorage, key, location, numel)`,
        stored raw at `<root>/data/<key>` (byte order in `<root>/byteorder`, little by default).
    legacy torch stream (`_use_new_zipfile_serialization=False`, and every
        `torch.storage._load_from_bytes(b)` of an EDM pickle): pickles of the magic number, protocol
        1001, a sys-info dict, the object (persistent ids `('storage', type, key, location, numel,
        None)`) and the list of keys; then per key an int64 element count and the raw elements.
    plain pickles (EDM's `network-snapshot-*.pkl`, Kadkhodaie et al.'s `exp_arguments.pkl`): EDM's
        networks are `torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type,
        version, module_src, class_name, state}; `module_src` is kept as text and never run.

Safety. Every pickle is read by `_Unpickler`, a `pickle.Unpickler` whose `find_class` returns only
this module's stand-ins for an explicit allow-list (`ALLOWED_GLOBALS`: tensor and parameter
rebuilds, storage classes, OrderedDict, set, numpy scalars and dtypes, torch.device, torch.Size,
pathlib paths and torch dtypes, as strings) and inert record classes for `STUB_CLASSES` /
`STUB_MODULES` (argparse.Namespace, torch.nn layers such as EDM's ModuleDicts, Pham et al.'s
`parse_utils` dataclasses: constructor arguments and BUILD state are recorded, their modules are
never imported). Any other global raises `UnsafePickleError` naming it and the file before anything
is called. The stand-ins (and the stub classes) refuse BUILD on themselves, so a file cannot patch
them.

Output: nested dict / list / tuple / set of Python scalars and strings with `np.ndarray` leaves
(native byte order, bfloat16 widened to float32); numpy scalars become Python numbers;
torch modules and stubbed objects become `PickledObject` records. `flatten_state_dict` turns a
module tree or a state dict into `{dotted.name: array}` as torch's `state_dict()` would,
`strip_prefix` removes DataParallel's `module.`, and `read_edm_pickle` gives an EDM snapshot's
network as a state dict with its class and hyper-parameters.

Memory. A file is read once, as a stream (never held whole): each storage's bytes are read into
one buffer, and a storage already in native byte order is decoded as a view of that buffer. A
tensor that spans its whole storage (contiguous, from offset 0: every tensor of EDM's pickles and
of most state dicts) is that storage reshaped, a read-only array over the file's bytes, with no
copy; a tensor that is a part of a storage, or strided, is copied out of it. Reading a file thus
costs about its size once.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import pathlib
import pickle
import zipfile
from typing import Any, Callable

import numpy as np

from diffmem.errors import DiffmemError, InputError, MissingInputError
from diffmem.metrics.pickle_arrays import UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "EDM_ATTRIBUTES", "LEGACY_MAGIC", "LEGACY_PROTOCOL",
           "STORAGE_DTYPES", "STUB_CLASSES", "STUB_MODULES", "PickledObject", "UnsafePickleError",
           "decode_storage", "flatten_state_dict", "parse_legacy_torch", "read_edm_pickle",
           "read_network_pickle", "read_torch_file", "read_torch_zip", "strip_prefix"]

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
# torch storage class -> numpy dtype of its elements ("bfloat16": uint16 bits, widened to float32)
STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2",
                  "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
                  "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
                  "BoolStorage": "?"}
STUB_CLASSES = frozenset({"argparse.Namespace"})
# Modules whose classes are recorded, never imported: any module path with one of these parts
# (utils.parse_utils too), and torch's own layers (torch.nn.modules.conv.Conv2d, ...).
STUB_MODULES = frozenset({"parse_utils", "torch.nn.modules"})
# Plain attributes of EDM's preconditioning modules that `read_edm_pickle` adds to the hparams.
EDM_ATTRIBUTES = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min",
                  "sigma_max", "sigma_data", "beta_d", "beta_min", "M", "epsilon_t")


@dataclasses.dataclass(frozen=True)
class PickledObject:
    """An object of a class that was recorded, not constructed.

    class_name: for an EDM persistent class (`kind="persistent"`, `source` its module_src, never
      run) its bare name (`SongUNet`); else the dotted global (`argparse.Namespace`).
    state: what BUILD gave it (a torch module's `__dict__`: `_parameters`, `_buffers`, `_modules`,
      plain attributes; a Namespace's fields); for a persistent object meta's `state`.
    args: its constructor arguments (NEWOBJ for `kind="object"`, a call for `kind="call"`).
    """

    class_name: str
    state: Any = None
    args: tuple = ()
    kind: str = "object"
    source: str | None = None


class _Refusal(Exception):
    """A stand-in's refusal; `_unpickle` turns it into an UnsafePickleError naming the file."""


class _Fn:
    """A callable stand-in for one allowed global; refuses BUILD (the file may not patch it)."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable | None):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        if self.fn is None:
            raise _Refusal(f"a call of {self.name}")
        return self.fn(*args)

    def __setstate__(self, state):
        raise _Refusal(f"BUILD on the global {self.name}")


class _StubMeta(type):
    def __setattr__(cls, name, value):  # BUILD with slot state on a stub class itself
        raise _Refusal(f"setting {name!r} on the class {cls._name}")


class _Stub(metaclass=_StubMeta):
    """Instances of a stubbed class: NEWOBJ gives `args`, a call sets kind "call", BUILD `state`."""

    _name = "?"

    def __new__(cls, *args, **kwargs):
        if kwargs:
            raise _Refusal(f"keyword arguments to {cls._name}")
        self = object.__new__(cls)
        self.args, self.state, self.kind, self.source = args, None, "object", None
        return self

    def __init__(self, *args):  # only a call (REDUCE) runs __init__; NEWOBJ runs __new__ alone
        self.kind = "call"

    def __setstate__(self, state):
        self.state = state


def _stub_class(name: str) -> type:
    return _StubMeta(name.rpartition(".")[2] or "Stub", (_Stub,), {"_name": name})


class _Storage:
    """A storage named by a persistent id; `array` (1-D, native order) once its bytes are read."""

    __slots__ = ("key", "dtype", "array")

    def __init__(self, key: str, dtype: str):
        self.key, self.dtype, self.array = key, dtype, None

    def __setstate__(self, state):
        raise _Refusal("BUILD on a storage")


class _Tensor:
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise _Refusal("BUILD on a tensor")


class _Dtype:
    """numpy.dtype(code, False, True) + BUILD (3, byteorder, ...): plain numeric dtypes only."""

    def __init__(self, code, align=False, copy=True):
        dtype = np.dtype(code) if isinstance(code, str) else None
        if dtype is None or dtype.kind not in "biufc" or dtype.fields is not None:
            raise _Refusal(f"numpy dtype {code!r}")
        self.dtype = dtype

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Refusal(f"numpy dtype state {state!r}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def decode_storage(raw, dtype: str, byteorder: str = "little") -> np.ndarray:
    """Raw storage bytes (bytes, bytearray or memoryview) -> a 1-D native-order array (bfloat16
    bits widened to float32): a view of `raw` when its elements are already native and aligned (no
    copy; read-only over bytes), else a converted copy."""
    order = "<" if byteorder == "little" else ">"
    if dtype == "bfloat16":
        return (np.frombuffer(raw, order + "u2").astype(np.uint32) << 16).view(np.float32)
    flat = np.frombuffer(raw, order + dtype)
    native = np.dtype(dtype).newbyteorder("=")
    if flat.dtype != native or not flat.flags.aligned:
        return flat.astype(native)  # a copy, converted (or aligned)
    return flat


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    ok = (isinstance(storage, _Storage) and isinstance(size, tuple) and isinstance(stride, tuple)
          and len(size) == len(stride)
          and all(type(v) is int and v >= 0 for v in (offset, *size, *stride)))
    if not ok:
        raise _Refusal(f"a tensor rebuild with arguments {(offset, size, stride)!r}")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *_ignored):
    if not isinstance(tensor, _Tensor):
        raise _Refusal("a parameter that is not a tensor")
    return tensor


def _rebuild_from_type(func, new_type, args, state=None):
    """torch._tensor._rebuild_from_type_v2: a tensor (subclass) with Python state; the tensor."""
    if not (isinstance(func, _Fn) and func.name in _TENSOR_REBUILDS and isinstance(args, tuple)):
        raise _Refusal("_rebuild_from_type_v2 of something that is not a tensor rebuild")
    return func(*args)


def _reconstruct_persistent(meta):
    if not (isinstance(meta, dict) and meta.get("type") == "class"
            and isinstance(meta.get("class_name"), str)):
        raise _Refusal("a persistent object whose meta is not {type: 'class', class_name, ...}")
    obj = _Stub.__new__(_stub_class(meta["class_name"]))
    obj.state, obj.kind, obj.source = meta.get("state"), "persistent", meta.get("module_src")
    return obj


def _scalar(dtype, data):
    if not (isinstance(dtype, _Dtype) and isinstance(data, bytes)
            and len(data) == dtype.dtype.itemsize):
        raise _Refusal("a numpy scalar without a numeric dtype and its bytes")
    return np.frombuffer(data, dtype.dtype)[0].item()


def _latin1(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refusal(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise _Refusal(f"torch.device{(kind, index)!r}")
    return kind if index is None else f"{kind}:{index}"


def _size(dims=()):
    if not all(type(d) is int for d in dims):
        raise _Refusal(f"torch.Size({dims!r})")
    return tuple(dims)


def _path(*parts):
    if not all(isinstance(s, str) for s in parts):
        raise _Refusal(f"a pathlib path of {parts!r}")
    return str(pathlib.PurePosixPath(*parts))


def _builtin(kind):
    def make(items=()):
        if kind is bytes and items != ():
            raise _Refusal("bytes() with arguments")
        return kind(items)
    return make


_TENSOR_REBUILDS = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
                    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state")
_TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool", "float", "double", "half", "long", "int")
_FUNCTIONS = {
    **dict(zip(_TENSOR_REBUILDS, [_rebuild_tensor] * 2 + [_rebuild_parameter] * 2)),
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent,
    "torch.storage._load_from_bytes": None,  # bound per file (for its errors) in find_class
    "collections.OrderedDict": collections.OrderedDict,
    "numpy.dtype": _Dtype, "numpy.core.multiarray.scalar": _scalar,
    "numpy._core.multiarray.scalar": _scalar, "_codecs.encode": _latin1,
    "torch.device": _device, "torch.Size": _size,
    **{f"{m}.{k.__name__}": _builtin(k) for m in ("builtins", "__builtin__")
       for k in (set, frozenset, bytes)},
    **{f"{m}.{k}": _path for m in ("pathlib", "pathlib._local")
       for k in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")},
    # named, never called: storage classes (in persistent ids), tensor types, torch dtypes
    **{f"torch.{name}": None for name in (*STORAGE_DTYPES, *_TORCH_DTYPES, "Tensor")},
    "torch.nn.parameter.Parameter": None,
}
ALLOWED_GLOBALS = frozenset(_FUNCTIONS) | STUB_CLASSES  # and the classes of STUB_MODULES


def _is_stubbed(module: str, name: str) -> bool:
    parts = module.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return (f"{module}.{name}" in STUB_CLASSES or bool(STUB_MODULES & set(parts))
            or bool(STUB_MODULES & prefixes))


class _Unpickler(pickle.Unpickler):
    """The only unpickler here: globals from `_FUNCTIONS` or stubs, storages by `load_storage`."""

    def __init__(self, f, name: str, load_storage: Callable[[_Storage, int], None] | None):
        super().__init__(f)
        self.name, self.load_storage, self.storages = name, load_storage, {}

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full == "torch.storage._load_from_bytes":
            return _Fn(full, lambda b: _load_from_bytes(b, self.name))
        if full in _FUNCTIONS:
            return _Fn(full, _FUNCTIONS[full])
        if _is_stubbed(module, name):
            return _stub_class(full)
        raise UnsafePickleError(f"{self.name}: refusing to read it: it names the global {full}, "
                                "which is no tensor, container or known record (nothing was run)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _Fn) and pid[1].name[6:] in STORAGE_DTYPES
                and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0
                and (len(pid) == 5 or pid[5] is None)):
            raise UnsafePickleError(f"{self.name}: refusing to read it: persistent id {pid!r} is "
                                    "not a torch storage (nothing was run)")
        key = pid[2]
        if key not in self.storages:
            self.storages[key] = _Storage(key, STORAGE_DTYPES[pid[1].name[6:]])
            if self.load_storage is not None:
                self.load_storage(self.storages[key], pid[4])
        return self.storages[key]


def _fail(name: str, what: str, e: BaseException | None = None) -> InputError:
    detail = f" ({type(e).__name__}: {e})" if e is not None else ""
    return InputError(f"{name}: {what}{detail}; the file is truncated or corrupt: download or "
                      "export it again")


def _unpickle(f, name: str, load_storage=None, unpickler: list | None = None):
    u = _Unpickler(f, name, load_storage)
    if unpickler is not None:
        unpickler.append(u)
    try:
        return u.load()
    except DiffmemError:
        raise
    except _Refusal as e:  # raised by a stand-in: name the file
        raise UnsafePickleError(f"{name}: refusing to read it: {e} (nothing was run)") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, RecursionError, MemoryError, OverflowError) as e:
        raise _fail(name, "cannot decode its pickle", e) from e


def _parse_legacy(data, name: str):
    """A legacy stream's object, its storages decoded: `data` its bytes (storages become views of
    them) or a binary file positioned at its start (each storage read once, into its own bytes)."""
    view = memoryview(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
    f = io.BytesIO(data) if view is not None else data
    if _unpickle(f, name) != LEGACY_MAGIC:
        raise InputError(f"{name}: not a torch file (no legacy magic number); check the path")
    if _unpickle(f, name) != LEGACY_PROTOCOL:
        raise InputError(f"{name}: unsupported legacy torch protocol; re-save it with torch.save")
    info = _unpickle(f, name)
    order = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
    holder: list = []
    obj = _unpickle(f, name, unpickler=holder)
    keys, storages = _unpickle(f, name), holder[0].storages
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            and sorted(keys) == sorted(storages)):
        raise _fail(name, "its storage key list does not match its tensors")
    for key in keys:
        st, head = storages[key], f.read(8)
        item = 2 if st.dtype == "bfloat16" else np.dtype(st.dtype).itemsize
        numel = int.from_bytes(head, order, signed=True) if len(head) == 8 else -1
        raw = _take(f, numel * item, view) if numel >= 0 else b""
        if numel < 0 or len(raw) != numel * item:
            raise _fail(name, f"storage {key} is cut short")
        st.array = decode_storage(raw, st.dtype, order)
    return obj


def _take(f, n: int, view: memoryview | None):
    """The next `n` bytes of `f` (fewer at its end): a slice of `view` (f's own buffer, no copy)
    when given, else read."""
    if view is None:
        return f.read(n)
    pos = f.tell()
    raw = view[pos:pos + n]
    f.seek(pos + len(raw))
    return raw


def parse_legacy_torch(data: bytes, name: str = "<bytes>") -> Any:
    """The object of a legacy `torch.save` stream's bytes; `name` is for error messages only."""
    return _resolve(_parse_legacy(data, name), name)


def _load_from_bytes(b, name: str) -> _Storage:
    if not isinstance(b, bytes):
        raise _Refusal("torch.storage._load_from_bytes of something that is not bytes")
    obj = _parse_legacy(b, name)
    if not isinstance(obj, _Storage):
        raise _Refusal("torch.storage._load_from_bytes of something that is not a storage")
    return obj


def _tensor_array(t: _Tensor, name: str) -> np.ndarray:
    flat = t.storage.array
    if flat is None:
        raise _fail(name, f"storage {t.storage.key} has no data")
    if 0 in t.size:
        return np.zeros(t.size, flat.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= flat.size:
        raise _fail(name, f"a tensor of size {t.size} reaches past storage {t.storage.key}")
    if t.offset == 0 and math.prod(t.size) == flat.size and all(
            s == math.prod(t.size[i + 1:]) for i, s in enumerate(t.stride) if t.size[i] > 1):
        whole = flat.reshape(t.size)  # the whole storage, contiguous: a view, no copy
        whole.flags.writeable = False
        return whole
    view = np.lib.stride_tricks.as_strided(flat[t.offset:], t.size,
                                           [s * flat.itemsize for s in t.stride], writeable=False)
    return np.array(view)  # a part of a storage (or strided): its own copy


def _resolve(obj, name: str):
    """`_plain` of a parsed file; what goes wrong on the way is one line naming the file."""
    try:
        return _plain(obj, name, {})
    except DiffmemError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, AttributeError) as e:
        raise _fail(name, "cannot rebuild its contents", e) from e


def _plain(obj, name: str, memo: dict):
    """Stand-ins -> arrays / PickledObject records, OrderedDicts -> dicts, recursively."""
    if isinstance(obj, (str, bytes, int, float, complex, type(None))):
        return obj
    if id(obj) in memo:  # shared objects stay shared
        return memo[id(obj)]
    if isinstance(obj, _Tensor):
        out = _tensor_array(obj, name)
    elif isinstance(obj, _Storage):
        out = _tensor_array(_Tensor(obj, 0, (-1 if obj.array is None else obj.array.size,), (1,)),
                            name)
    elif isinstance(obj, _Stub):
        out = PickledObject(obj._name, _plain(obj.state, name, memo),
                            _plain(obj.args, name, memo), obj.kind, obj.source)
    elif isinstance(obj, dict):
        out = {_plain(k, name, memo): _plain(v, name, memo) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple, set, frozenset)):
        out = type(obj)(_plain(v, name, memo) for v in obj)
    elif isinstance(obj, _Fn):
        out = obj.name
    elif isinstance(obj, _Dtype):
        out = obj.dtype.str
    else:
        raise UnsafePickleError(f"{name}: refusing to read it: unexpected {type(obj).__name__}")
    memo[id(obj)] = out
    return out


def _open(path):
    """`path` opened for binary reading; a missing or unreadable file is one line naming it."""
    try:
        return open(path, "rb")
    except FileNotFoundError as e:
        raise MissingInputError(f"{path}: no such file; check the path") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e})") from e


def read_torch_zip(path) -> Any:
    """The object saved in a torch zip checkpoint, tensors as `np.ndarray` (module docstring)."""
    name = str(path)
    with _open(path) as f:
        return _read_zip(f, name)


def _read_zip(f, name: str) -> Any:
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise _fail(name, "cannot open it as a zip", e) from e
    with zf:
        names = set(zf.namelist())
        pkls = [n for n in names if n.rpartition("/")[2] == "data.pkl" and n.count("/") <= 1]
        if len(pkls) != 1:
            raise InputError(f"{name}: not a torch zip checkpoint (no single <root>/data.pkl); "
                             "check the file")
        root = pkls[0][: -len("data.pkl")]

        def record(rec: str) -> bytes:
            try:
                return zf.read(root + rec)
            except (KeyError, zipfile.BadZipFile, ValueError, EOFError, OSError, RuntimeError,
                    NotImplementedError) as e:  # missing, corrupt, encrypted, unknown method
                raise _fail(name, f"cannot read its record {root + rec}", e) from e

        order = record("byteorder").decode("ascii", "replace") \
            if root + "byteorder" in names else "little"
        if order not in ("little", "big"):
            raise _fail(name, f"its byteorder record says {order!r}")

        def load_storage(st: _Storage, numel: int) -> None:
            raw = record(f"data/{st.key}")
            item = 2 if st.dtype == "bfloat16" else np.dtype(st.dtype).itemsize
            if len(raw) < numel * item:
                raise _fail(name, f"storage {st.key} holds {len(raw)} bytes, not {numel * item}")
            st.array = decode_storage(memoryview(raw)[:numel * item], st.dtype, order)

        return _resolve(_unpickle(io.BytesIO(record("data.pkl")), name, load_storage), name)


def read_network_pickle(path) -> Any:
    """The object of a plain pickle (EDM's network-snapshot-*.pkl, exp_arguments.pkl, ...)."""
    name = str(path)
    with _open(path) as f:
        return _resolve(_unpickle(f, name), name)


def read_torch_file(path) -> Any:
    """Any of the three formats, told apart by their first bytes (zip, legacy magic, pickle)."""
    name = str(path)
    with _open(path) as f:
        try:
            head = f.read(4)
            f.seek(0)
        except OSError as e:
            raise InputError(f"{path}: cannot read it ({e})") from e
        if head == b"PK\x03\x04":
            return _read_zip(f, name)
        if head[:3] == b"\x80\x02\x8a":  # protocol 2, then a LONG1: the legacy magic number
            return _resolve(_parse_legacy(f, name), name)
        return _resolve(_unpickle(f, name), name)


def flatten_state_dict(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """{dotted name: array} of a module tree (PickledObject whose state has `_parameters`,
    `_buffers`, `_modules`; in `state_dict()` order, None entries and `_non_persistent_buffers_set`
    left out) or of a (nested) dict of arrays (a state dict: keys kept, order kept)."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, PickledObject):
        state = tree.state if isinstance(tree.state, dict) else {}
        skip = state.get("_non_persistent_buffers_set") or ()
        for group in ("_parameters", "_buffers"):
            for k, v in (state.get(group) or {}).items():
                if v is not None and not (group == "_buffers" and k in skip):
                    out[prefix + k] = v
        for k, v in (state.get("_modules") or {}).items():
            if v is not None:
                out.update(flatten_state_dict(v, f"{prefix}{k}."))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            if isinstance(v, np.ndarray):
                out[prefix + str(k)] = v
            elif isinstance(v, (dict, PickledObject)):
                out.update(flatten_state_dict(v, f"{prefix}{k}."))
    return out


def strip_prefix(tensors: dict, prefix: str = "module.") -> dict:
    """`tensors` without `prefix` on its keys when every key has it (DataParallel), else as is."""
    if tensors and all(isinstance(k, str) and k.startswith(prefix) for k in tensors):
        return {k[len(prefix):]: v for k, v in tensors.items()}
    return dict(tensors)


def read_edm_pickle(path, key: str = "ema") -> dict:
    """The network `key` of an EDM snapshot: {state_dict: {dotted name: array} as its
    `state_dict()` (`model.` prefix), class_name (EDMPrecond, VPPrecond, VEPrecond, ...), hparams:
    its inner `model`'s init kwargs updated by its own and by EDM_ATTRIBUTES, dataset_kwargs}."""
    obj = read_network_pickle(path)
    net = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(net, PickledObject) or not isinstance(net.state, dict):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: no network {key!r} in it (found {found}); is it an EDM "
                         "network-snapshot-*.pkl?")
    inner = (net.state.get("_modules") or {}).get("model")
    hparams = dict(inner.state.get("_init_kwargs") or {}) \
        if isinstance(inner, PickledObject) and isinstance(inner.state, dict) else {}
    hparams.update(net.state.get("_init_kwargs") or {})
    hparams.update({k: net.state[k] for k in EDM_ATTRIBUTES if k in net.state})
    return dict(state_dict=flatten_state_dict(net), class_name=net.class_name, hparams=hparams,
                dataset_kwargs=obj.get("dataset_kwargs"))
