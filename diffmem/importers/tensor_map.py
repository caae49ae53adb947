"""Tensor-by-tensor maps between a PyTorch state dict and a diffmem network's Flax variables.

A map is a list of `Entry`s, one per source tensor, in the source's module order: the tensor's
dotted name in the state dict, where it lives in the Flax variables (`("params", "enc_32x32_conv",
"kernel")`) and how its layout changes (`LAYOUTS`):

    layout    source (PyTorch)                 diffmem (Flax)
    conv      Conv2d weight (O, I, kh, kw)     Conv kernel (kh, kw, I, O)
    linear    Linear weight (O, I)             Dense kernel (I, O)
    conv1x1   Conv2d weight (O, I, 1, 1)       Dense kernel (I, O) (a 1x1 conv written as a Dense)
    convT     ConvTranspose2d (I, O, kh, kw)   kernel (kh, kw, I, O) (`nets.bfcnn.UpConv2`)
    chan      (1, C, 1, 1) per-channel vector  (C,) (Kadkhodaie's gammas and running_sd)
    same      any (bias, GroupNorm weight -> scale, NIN weight (I, O), EDM's Fourier freqs)
    const     a buffer with a fixed value (EDM's resample filter): checked on import, written
              on export

Every layout is a pure transpose / reshape, so `to_flax(from_flax(v)) == v` and
`from_flax(to_flax(s)) == s` bit for bit. Anything that does not map stops with one `MappingError`
line naming the first offending key: a key the map does not know, a key the map needs that is
absent, a shape that differs from what the network's hyper-parameters imply.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from diffmem.errors import InputError

__all__ = ["LAYOUTS", "Entry", "MappingError", "ImportedModel", "flatten_variables", "to_flax",
           "from_flax", "template"]

LAYOUTS = ("conv", "linear", "conv1x1", "convT", "chan", "same", "const")


class MappingError(InputError):
    """A source file's tensors do not map onto the diffmem network (one line, naming the key)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One source tensor: `key` (dotted, as in the state dict), its Flax `path` (collection first),
    its `layout` (`LAYOUTS`), and for layout "const" the fixed `value` it must hold."""
    key: str
    path: tuple[str, ...]
    layout: str
    value: Any = None


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """What an importer returns: everything `workdir_writer.import_model` needs to write a workdir.

    model, diffusion: the config sections (`diffmem.config_schema`); sample: the `sample` section's
    sampler settings; variables: the Flax variables {"params": ..., ["batch_stats": ...]} as numpy
    arrays; image_shape: (H, W, C) of the images the network was built for (None: any size, blind
    nets); step: the training step or image count the source records (>= 1); source_info: a
    JSON-able note of what was read (format, class, kept hyper-parameters); dropped: source keys
    read and checked but not kept, each with the reason (e.g. EDM's map_augment, unused when
    sampling).
    """
    model: dict
    diffusion: dict
    sample: dict
    variables: dict
    image_shape: tuple[int, int, int] | None
    step: int = 1
    source_info: dict = dataclasses.field(default_factory=dict)
    dropped: tuple[str, ...] = ()


# ------------------------------------------------------------------------------- per-tensor layouts
def _to_flax(layout: str, a: np.ndarray) -> np.ndarray:
    if layout == "conv":
        return np.transpose(a, (2, 3, 1, 0))
    if layout == "linear":
        return np.transpose(a, (1, 0))
    if layout == "conv1x1":
        return np.transpose(a[:, :, 0, 0], (1, 0))
    if layout == "convT":
        return np.transpose(a, (2, 3, 0, 1))
    if layout == "chan":
        return a.reshape(-1)
    return a


def _to_source(layout: str, a: np.ndarray) -> np.ndarray:
    if layout == "conv":
        return np.transpose(a, (3, 2, 0, 1))
    if layout == "linear":
        return np.transpose(a, (1, 0))
    if layout == "conv1x1":
        return np.transpose(a, (1, 0))[:, :, None, None]
    if layout == "convT":
        return np.transpose(a, (2, 3, 0, 1))
    if layout == "chan":
        return a.reshape(1, -1, 1, 1)
    return a


def _source_shape(layout: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the source tensor must have for a Flax leaf of `flax_shape`."""
    return _to_source(layout, np.broadcast_to(np.float32(0), flax_shape)).shape


# ----------------------------------------------------------------------------------------- the maps
def flatten_variables(variables: Mapping) -> dict[tuple[str, ...], Any]:
    """{path tuple: leaf} of a nested dict of variables (collection first)."""
    return traverse_util.flatten_dict(dict(variables))


def template(net, x_shape: tuple[int, ...], *call_shapes) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of `net`'s variables for a (1, H, W, C) input (and further float inputs of
    `call_shapes`, e.g. (1,) for the noise label), from `jax.eval_shape` (nothing is computed)."""
    import jax
    import jax.numpy as jnp
    args = [jax.ShapeDtypeStruct(x_shape, jnp.float32)] + [jax.ShapeDtypeStruct(s, jnp.float32)
                                                           for s in call_shapes]
    shapes = jax.eval_shape(lambda *a: net.init(jax.random.key(0), *a), *args)
    return {p: tuple(leaf.shape) for p, leaf in flatten_variables(shapes).items()}


def _check_map(entries: Sequence[Entry], shapes: Mapping[tuple[str, ...], tuple[int, ...]],
               who: str):
    """The map covers every Flax leaf exactly once (a diffmem bug otherwise, not a file problem)."""
    paths = [e.path for e in entries if e.layout != "const"]
    unknown = [p for p in paths if p not in shapes]
    missing = [p for p in shapes if p not in set(paths)]
    if unknown or missing or len(set(paths)) != len(paths):
        raise AssertionError(f"{who} map out of step with the diffmem network: unknown "
                             f"{unknown[:3]}, unmapped {missing[:3]}, repeated "
                             f"{len(paths) - len(set(paths))}")


def to_flax(state: Mapping[str, np.ndarray], entries: Sequence[Entry],
            shapes: Mapping[tuple[str, ...], tuple[int, ...]], who: str,
            ignore: Mapping[str, str] | None = None, consume: bool = False) -> dict:
    """Flax variables (nested dict of float32 numpy arrays) from a source state dict.

    state: {dotted name: array} in the source layout; entries: the map (module docstring); shapes:
    the Flax leaves' shapes (`template`); who: the source's name for messages ("EDM
    network-snapshot"); ignore: {key: reason} of source keys that are known and deliberately not
    kept; consume: pop each mapped tensor from `state` (a dict the caller gives up) as its Flax
    copy is made, so the source's memory goes tensor by tensor and the peak is one copy of the
    weights, not two (a tensor already in the Flax layout is kept, not copied). Raises
    MappingError naming the first key that does not map.
    """
    _check_map(entries, shapes, who)
    by_key = {e.key: e for e in entries}
    ignore = dict(ignore or {})
    for key in state:
        if key not in by_key and key not in ignore:
            raise MappingError(f"{who}: tensor {key!r} {tuple(np.shape(state[key]))} does not map "
                               "onto the diffmem network built from the file's hyper-parameters "
                               "(no such layer).")
    flat = {}
    for e in entries:
        if e.key not in state:
            raise MappingError(f"{who}: tensor {e.key!r} is missing: the network built from the "
                               "file's hyper-parameters needs it.")
        a = np.asarray(state.pop(e.key) if consume else state[e.key])
        if e.layout == "const":
            want = np.asarray(e.value, np.float32)
            if a.shape != want.shape or not np.allclose(a, want, rtol=0, atol=1e-7):
                raise MappingError(f"{who}: buffer {e.key!r} holds {a.ravel()[:8].tolist()}, not "
                                   f"the {want.ravel().tolist()} the diffmem network hard-codes.")
            continue
        expected = _source_shape(e.layout, shapes[e.path])
        if a.shape != expected:
            raise MappingError(f"{who}: tensor {e.key!r} has shape {a.shape}; the diffmem network "
                               f"built from the file's hyper-parameters needs {expected}.")
        if not np.issubdtype(a.dtype, np.floating):
            raise MappingError(f"{who}: tensor {e.key!r} is {a.dtype}, not floating point.")
        flat[e.path] = np.ascontiguousarray(_to_flax(e.layout, a), dtype=np.float32)
    return traverse_util.unflatten_dict(flat)


def from_flax(variables: Mapping, entries: Sequence[Entry],
              who: str = "export") -> "OrderedDict[str, np.ndarray]":
    """The source state dict {dotted name: float32 array} of Flax variables, in the map's (module)
    order; const buffers are written with their fixed value. The inverse of `to_flax`."""
    flat = flatten_variables(variables)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for e in entries:
        if e.layout == "const":
            out[e.key] = np.asarray(e.value, np.float32)
            continue
        if e.path not in flat:
            raise MappingError(f"{who}: the diffmem variables have no {'/'.join(e.path)} for "
                               f"{e.key!r}.")
        out[e.key] = np.ascontiguousarray(_to_source(e.layout, np.asarray(flat[e.path])),
                                          dtype=np.float32)
    extra = set(flat) - {e.path for e in entries}
    if extra:
        raise MappingError(f"{who}: diffmem variable {'/'.join(sorted(extra)[0])} has no place in "
                           "the source layout.")
    return out
