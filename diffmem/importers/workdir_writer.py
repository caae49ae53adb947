"""Write a published model as a diffmem workdir, so every stage runs on it unchanged.

    path = import_model("network-snapshot.pkl", "edm", "runs/edm-cifar",
                        data="cifar10-binary:cifar.tar.gz")
    Workdir(path).model("50000")        # its EMA weights as the common denoiser D(x, sigma)
    python bin/sample.py --workdir=runs/edm-cifar --seeds=0-99

What is written, exactly as `bin/train.py` writes a trained model:
  config.json           the one schema (`config_schema.assemble`, validated): the network's `model`
                        section, the `diffusion` section of its preconditioning (sigma range,
                        sigma_data, DDPM grid), a loss / optimizer matching the source's recipe, the
                        `sample` section of the source's sampler, `data` (below), `steps` = the
                        source's step count
  checkpoints/<K>/<step>  an orbax checkpoint {step, params, ema_params, opt_state}: the weights
                        as both params and EMA params, a fresh Adam state of `config.optim` (so
                        bin/train.py can fine-tune from it), with the config and every leaf's
                        sha256 in its metadata. It is written from the imported numpy arrays
                        themselves (no jax copy, no copy by orbax: the save is waited for), the
                        Adam moments as untouched zero pages, its data files flushed every
                        `DATA_FILE_BYTES` (orbax's default, 2 GiB, holds the whole encoded
                        checkpoint in memory until the end), so the import's memory stays near
                        one copy of the weights
  subsets/<K>.npz       the training set's rows and hash, as training records them
  imported.json         where it came from: format, source path, keys read but not kept,
                        hyper-parameters

`data`: the training set, an image source of `diffmem.data.images.load_images`
("cifar10-binary:PATH", "npz:PATH", "tfds:cifar10", "folder:PATH", ...); the model's training set is
its first K images (K = all of them by default). A model trained on a subset drawn by its own code
should be given that subset as a file (npz:PATH), since diffmem cannot redraw another program's
random split. Without `data`, the workdir holds a one-image placeholder set (a mid-grey image in
imported/placeholder.npz, K = 1, model name "1"): sampling, energies and Jacobians work; distances
to the training set mean nothing.

An existing workdir is never overwritten: the import stops at once (one line).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from diffmem.errors import InputError, OutputExistsError
from diffmem.importers.tensor_map import ImportedModel

__all__ = ["FORMATS", "read_source", "build_config", "write_workdir", "import_model"]

FORMATS = ("edm", "pham", "kadkhodaie", "diffusers")
PLACEHOLDER = os.path.join("imported", "placeholder.npz")
PROVENANCE = "imported.json"
DATA_FILE_BYTES = 1 << 20
"""The checkpoint's OCDBT data files are written as each reaches this size: what the save holds
encoded in memory at once."""


def read_source(source: str, format: str, *, image_size: int | None = None,
                first_layer_linear: bool | None = None) -> ImportedModel:
    """Read a published model file (or diffusers folder) of `format` (`FORMATS`) into an
    ImportedModel. image_size: the image side length where the file does not record it (Kadkhodaie's
    blind nets; Pham et al.'s bare state dicts); first_layer_linear: BF-CNN's setting when no
    exp_arguments.pkl says it."""
    from diffmem.errors import MissingInputError
    if format not in FORMATS:
        raise InputError(f"Unknown format {format!r}; choose one of {list(FORMATS)}.")
    if not os.path.exists(source):
        raise MissingInputError(f"{source} not found.")
    if format == "edm":
        from diffmem.importers import edm
        return edm.read(source)
    if format == "pham":
        from diffmem.importers import pham
        return pham.read(source, image_size=image_size)
    if format == "diffusers":
        from diffmem.importers import diffusers
        return diffusers.read(source)
    from diffmem.importers import kadkhodaie
    if image_size is None:
        raise InputError("Kadkhodaie et al.'s denoisers do not record the image size: give "
                         "--image_size (or --data, whose images set it).")
    return kadkhodaie.read(source, image_size=image_size, first_layer_linear=first_layer_linear)


def _loss_optim(imported: ImportedModel) -> dict:
    """loss, optim, ema and loop sections of the source's recipe (what a fine-tuning run would
    use)."""
    from diffmem.config_schema import optim_section
    name = imported.model["name"]
    if name in ("bf_unet", "bf_cnn"):
        return dict(loss=dict(name="blind", images_per_step=512, max_sigma_255=255.0,
                              units="net sees (x + 1) / 2 in [0, 1]; D = 2 D01((x + 1) / 2) - 1"),
                    optim=optim_section(1e-3), ema=dict(decay=0.0, warmup=False), batch_size=512)
    if imported.diffusion.get("precond") == "ddpm":
        return dict(loss=dict(name="eps", reduction="mean"), optim=optim_section(2e-4,
                                                                                 grad_clip=1.0),
                    ema=dict(decay=0.9999, warmup=False), batch_size=128)
    return dict(loss=dict(name="denoising", reduction="sum"), optim=optim_section(2e-4),
                ema=dict(decay=0.999, warmup=False), batch_size=512)


def build_config(imported: ImportedModel, data: dict, seed: int = 0):
    """The workdir's config (a validated ConfigDict) of an imported model and its `data` section."""
    from diffmem.config_schema import assemble
    return assemble(seed=seed, data=data, model=imported.model, diffusion=imported.diffusion,
                    steps=int(imported.step), steps_per_call=1, log_every=100, ckpt_every=1000,
                    sample=imported.sample, **_loss_optim(imported))


def _data_section(workdir: str, imported: ImportedModel, data: str | None, k: int | None,
                  image_size: int | None, grayscale: bool | None) -> dict:
    from diffmem import builders, image_configs, report
    import ml_collections
    shape = imported.image_shape
    if data is None:
        if shape is None:
            raise InputError("The model does not record its image size: give --image_size or "
                             "--data.")
        path = os.path.abspath(os.path.join(workdir, PLACEHOLDER))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        report.write_npz(path, images=np.zeros((1,) + tuple(shape), np.float32))
        return image_configs.data_section(f"npz:{path}", 1)
    gray = bool(grayscale) if grayscale is not None else bool(shape is not None and shape[2] == 1)
    section = image_configs.data_section(data, 1, image_size=int(image_size or 0), grayscale=gray)
    pool = builders.load_pool(ml_collections.ConfigDict(dict(data=section)))
    if shape is not None and tuple(pool.shape[1:]) != tuple(shape):
        raise InputError(f"--data {data} holds images of shape {tuple(pool.shape[1:])}, the "
                         f"network takes {tuple(shape)}: set --image_size / --grayscale, or give "
                         "the data it was trained on.")
    k = len(pool) if k is None else int(k)
    if not 1 <= k <= len(pool):
        raise InputError(f"--k = {k}: the data has {len(pool)} images.")
    section["k"] = k
    return section


def write_workdir(imported: ImportedModel, workdir: str, *, data: str | None = None,
                  k: int | None = None, image_size: int | None = None,
                  grayscale: bool | None = None, source: str = "", format: str = "") -> str:
    """Write `imported` as a workdir (module docstring); returns its path. Refuses an existing
    workdir; a failed import removes the folder it created, so the same command can be rerun."""
    import shutil

    from diffmem import lock
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise OutputExistsError(f"{workdir} already exists: an import never overwrites; choose a "
                                "new --workdir.")
    if imported.image_shape is None and image_size is None and data is None:
        raise InputError("The model does not record its image size: give --image_size or --data.")
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        with lock.workdir_lock(workdir, "importing"):
            _write(imported, workdir, data, k, image_size, grayscale, source, format)
    except BaseException:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir


def _write(imported: ImportedModel, workdir: str, data, k, image_size, grayscale, source,
           format) -> None:
    import jax
    import jax.numpy as jnp

    from diffmem import builders
    from diffmem import workdir as wdlib
    section = _data_section(workdir, imported, data, k, image_size, grayscale)
    config = build_config(imported, section)
    wd = wdlib.Workdir(workdir)
    wd.write_config(config)
    _record_first_k(wd, config)
    spec = wd.specs(config)[0]
    params = imported.variables  # numpy arrays, written as they are (a jax copy would double them)
    x = jnp.asarray(spec.data[:1])
    like = jax.eval_shape(lambda: _net(config, spec).init(jax.random.key(0), x,
                                                          jnp.ones((1,), jnp.float32)))
    pairs = zip(jax.tree.leaves(like), jax.tree.leaves(params))
    if jax.tree.structure(like) != jax.tree.structure(params) or any(
            a.shape != b.shape for a, b in pairs):
        raise InputError(f"The imported weights do not fit the network of {wd.config_path} "
                         f"(images of shape {spec.data.shape[1:]}).")
    tx = builders.build_optimizer(config)  # the trainer's: bin/train.py resumes from it
    step = int(imported.step)
    state = {"step": jnp.asarray(step, jnp.int32), "params": params, "ema_params": params,
             "opt_state": _fresh_opt_state(tx, params)}
    _save_checkpoint(workdir, spec.name, step, state, wdlib.config_as_json(config))
    _write_provenance(wd, imported, source, format, spec.name, data)


def _fresh_opt_state(tx, params):
    """`tx.init(params)` as numpy arrays. An optimizer whose initial state is all zeros (optax's
    Adam, clipping and schedule counts: checked on a one-element-per-leaf copy of `params`) gets
    `_zeros` leaves, fresh pages the kernel maps only when written: the moments (two copies of the
    weights' size) cost no memory while orbax reads them to write zeros. Any other state is
    computed by `tx.init` itself."""
    import jax
    probe = jax.tree.map(lambda a: np.ones((1,) * np.ndim(a), np.asarray(a).dtype), params)
    if all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(tx.init(probe))):
        return jax.tree.map(lambda s: _zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
    return jax.tree.map(np.asarray, tx.init(params))


def _zeros(shape, dtype) -> np.ndarray:
    """A zero array; from 64 KiB on, over an anonymous mapping of its own: zero pages until
    written, where `np.zeros` may reuse (and so clear, making resident) memory the process freed."""
    import mmap
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes < 1 << 16:
        return np.zeros(shape, dtype)
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # shared memory would be resident when read
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=private), dtype).reshape(shape)


def _save_checkpoint(workdir: str, name: str, step: int, state, config: dict) -> None:
    """`checkpoint.save` + `checkpoint.wait` of `state` (numpy leaves) as model `name`'s step
    `step`, with the same checks and record (free space, every leaf's sha256, the config), written
    without copies: orbax's numpy handler here does not copy each host array first (it does so that
    an asynchronous save may outlive the caller's arrays; this save is waited for and nothing
    writes to them), and data files are flushed every `DATA_FILE_BYTES`. The checkpoint is an
    ordinary PyTree checkpoint: `checkpoint.restore` and `checkpoint.restore_item` read it."""
    import jax
    import orbax.checkpoint as ocp

    from diffmem import checkpoint
    from diffmem.layout import Layout
    th = ocp.type_handlers
    registry = th.create_type_handler_registry(
        (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)),
        *[(t, th.get_type_handler(t)) for t in (jax.Array, int, float, np.number)])
    mngr = ocp.CheckpointManager(
        Layout(workdir).checkpoint_dir(name),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
        item_handlers=ocp.PyTreeCheckpointHandler(type_handler_registry=registry))
    try:
        record = {"sha256": checkpoint.tree_sha256(state), "config": config}
        checkpoint.check_free_space(mngr, step, state)
        with checkpoint.write_errors(mngr):
            mngr.save(int(step), args=ocp.args.PyTreeSave(
                state, ocdbt_target_data_file_size=DATA_FILE_BYTES),
                custom_metadata={checkpoint.METADATA_KEY: record})
        checkpoint.wait(mngr)
    finally:
        mngr.close()


def _record_first_k(wd, config) -> None:
    """subsets/<K>.npz selecting the data's first K images (the indices every reader uses in place
    of the config's seeded permutation, `Workdir.specs`), with their hash, as training records a
    subset."""
    from diffmem import builders, report
    from diffmem import workdir as wdlib
    pool = builders.load_pool(config)
    k = int(config.data.k)
    report.write_npz(wd.subset_path(k), indices=np.arange(k, dtype=np.int64),
                     sha256=np.str_(wdlib._data_sha256(pool[:k])), pool_size=np.int64(len(pool)))


def _net(config, spec):
    from diffmem import builders
    return builders.build_model(config, spec.data.shape[1:])


def _write_provenance(wd, imported: ImportedModel, source: str, format: str, name: str,
                      data: str | None) -> None:
    from diffmem import report
    record: dict[str, Any] = dict(
        format=format or imported.source_info.get("format"), model=name, step=int(imported.step),
        source=os.path.abspath(source) if source else "", dropped=list(imported.dropped),
        data=data or f"placeholder ({PLACEHOLDER}: no training set given)",
        source_info=imported.source_info)
    report.write_json(os.path.join(wd.path, PROVENANCE), json.loads(json.dumps(record,
                                                                               default=str)))


def import_model(source: str, format: str, workdir: str, data: str | None = None, *,
                 k: int | None = None,
                 image_size: int | None = None, grayscale: bool | None = None,
                 first_layer_linear: bool | None = None) -> str:
    """Read a published model (`read_source`) and write it as a diffmem workdir (`write_workdir`);
    returns the workdir's path. data: the training set's image source (optional; see the module
    docstring), k: its size (default all of it)."""
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise OutputExistsError(f"{workdir} already exists: an import never overwrites; choose a "
                                "new --workdir.")
    size = image_size
    if size is None and data is not None and format == "kadkhodaie":
        size = _data_size(data, grayscale)
    imported = read_source(source, format, image_size=size, first_layer_linear=first_layer_linear)
    return write_workdir(imported, workdir, data=data, k=k, image_size=image_size,
                         grayscale=grayscale, source=source, format=format)


def _data_size(data: str, grayscale: bool | None) -> int:
    import ml_collections

    from diffmem import builders, image_configs
    section = image_configs.data_section(data, 1, grayscale=bool(grayscale))
    return int(builders.load_pool(ml_collections.ConfigDict(dict(data=section))).shape[1])
