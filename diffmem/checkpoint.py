"""All orbax use in one place: one checkpoint directory per model, found by name (K).

Each model's directory is `diffmem.layout.Layout(path).checkpoint_dir(name)`
(checkpoints/<name>/<step>/..., <name> the model's K `"9"`, or `"<K>_s<seed>"` in seed sweeps). Each
checkpoint holds {"params", "ema_params", "opt_state", "step"}; `restore_item` reads one of them
alone (the sampling stages read "ema_params").
orbax writes every step to a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact.

Nothing read back is silently wrong:
  * every save records, in the step's own metadata (orbax's `custom_metadata`, renamed with the
    step), the sha256 of each leaf as written (`tree_sha256`) and the training config; every restore
    recomputes the leaves' sha256 and refuses a mismatch, naming the step and the earlier step to
    fall back to;
  * a save checks the free space first and fails at once, naming the directory, when the checkpoint
    will not fit; an asynchronous write that fails anyway (full disk, permissions) stops training at
    the next chunk (`check`) as a one-line `WriteError`;
  * every error is one line: orbax's multi-line messages are folded (`_one_line`).
Checkpoints written before checksums were recorded are read without the check.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffmem import multihost
from diffmem.errors import DiffmemError, InputError, WriteError
from diffmem.layout import Layout, sort_key

__all__ = ["METADATA_KEY", "CheckpointError", "manager", "tree_sha256", "recorded_config", "save",
           "check", "wait", "restore", "list_models", "restore_item", "latest_step",
           "restore_latest", "check_free_space", "write_errors"]

METADATA_KEY = "diffmem"
"""The key of diffmem's record in a step's `custom_metadata`: {"sha256": {leaf path: hex}, "config":
{...}}."""
_WRITE_FAILURES = ("RESOURCE_EXHAUSTED", "No space left", "Permission denied",
                   "Read-only file system", "PERMISSION_DENIED", "Disk quota exceeded")
"""Texts of orbax / tensorstore errors (raised as ValueError or RuntimeError) that mean a write
failed."""


class CheckpointError(DiffmemError, RuntimeError):
    """A checkpoint is missing, partial, damaged or unreadable; the message says what to do."""


def _dir(workdir: str, name: str) -> str:
    return Layout(workdir).checkpoint_dir(name)


def _one_line(e: BaseException, limit: int = 300) -> str:
    """`type: message` of an exception on one line (orbax pretty-prints trees over many lines), cut
    at `limit`."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return f"{type(e).__name__}: {text}"


def manager(
    workdir: str, name: str, max_to_keep: int | None = 2, keep_steps=()
) -> ocp.CheckpointManager:
    """The orbax CheckpointManager of model `name` in `workdir` (created on first use): it keeps the
    latest `max_to_keep` checkpoints (None: all; at least 1) and, besides them, every step of
    `keep_steps` (the snapshots of `config.monitor.snapshots`, `diffmem.monitor`)."""
    if max_to_keep is not None and int(max_to_keep) < 1:
        raise InputError(
            f"keep_checkpoints = {max_to_keep}: at least 1 checkpoint must be kept (the result)."
        )
    if keep_steps and max_to_keep is not None:
        from orbax.checkpoint import checkpoint_managers as policies
        keep = policies.AnyPreservationPolicy(
            [policies.LatestN(max_to_keep),
             policies.CustomSteps(sorted(int(s) for s in keep_steps))]
        )
        options = ocp.CheckpointManagerOptions(create=True, preservation_policy=keep)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(_dir(workdir, name), options=options)


# ---------------------------------------------------------------------------------------- checksums
def tree_sha256(tree: Any) -> dict[str, str]:
    """{leaf path: sha256 hex} of a tree's leaves as host arrays (dtype, shape and bytes), paths as
    `jax.tree_util.keystr` writes them (e.g. "['ema_params']['params']['Dense_0']['kernel']")."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.ascontiguousarray(multihost.to_host(leaf))
        h = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
        h.update(value.tobytes())
        out[jax.tree_util.keystr(path)] = h.hexdigest()
    return out


def _recorded(mngr: ocp.CheckpointManager, step: int) -> dict:
    """diffmem's record in the step's metadata ({} for checkpoints written before it existed).

    Read from the step's `_CHECKPOINT_METADATA` JSON file (orbax's on-disk name for the step
    metadata), which takes a millisecond where `CheckpointManager.metadata(step)` also reads every
    array's metadata (0.3-0.7 s for the digits UNet); `metadata(step)` is the fallback where that
    file is absent.
    """
    path = os.path.join(str(mngr.directory), str(int(step)), "_CHECKPOINT_METADATA")
    try:
        if os.path.exists(path):
            with open(path) as f:
                custom = json.load(f).get("custom_metadata") or {}
        else:
            custom = mngr.metadata(int(step)).custom_metadata or {}
    except Exception:  # an unreadable metadata file: the restore itself reports a damaged step
        return {}
    record = custom.get(METADATA_KEY)
    return record if isinstance(record, dict) else {}


def recorded_config(directory: str, step: int | None = None) -> dict | None:
    """The training config (a JSON dict) recorded with a checkpoint of the model in `directory`
    (latest step unless `step`), or None (no checkpoint, or one written before configs were
    recorded)."""
    if not os.path.isdir(directory):
        return None
    mngr = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
    step = mngr.latest_step() if step is None else step
    return None if step is None else _recorded(mngr, step).get("config")


def _verify(mngr: ocp.CheckpointManager, step: int, tree: Any) -> None:
    """Compare the restored `tree`'s leaves with the sha256 recorded at save time (leaves of `tree`
    only: a partial restore checks what it read)."""
    recorded = _recorded(mngr, step).get("sha256")
    if not recorded:
        return
    got = tree_sha256(tree)
    bad = [p for p, h in got.items() if p in recorded and recorded[p] != h]
    missing = [p for p in got if p not in recorded]
    if not bad and not missing:
        return
    path = os.path.join(str(mngr.directory), str(step))
    earlier = sorted(s for s in mngr.all_steps() if s < int(step))
    fallback = (f"delete {path} to fall back to the previous checkpoint, step {earlier[-1]}"
                if earlier else f"no earlier checkpoint is kept: delete {path} and retrain")
    what = (
        f"{len(bad)} array(s) differ from what was saved, first {bad[0]}"
        if bad
        else f"it has arrays that were never saved, first {missing[0]}"
    )
    raise CheckpointError(
        f"Checkpoint step {step} in {mngr.directory} fails its checksum ({what}): its files "
        f"are damaged. To recover, {fallback} (a rerun of bin/train.py resumes from it)."
    )


# --------------------------------------------------------------------------------------------- save
def save(mngr: ocp.CheckpointManager, step: int, tree: Any, *, config: dict | None = None) -> None:
    """Save `tree` at `step` (asynchronously: call `wait` before exiting), with the sha256 of its
    leaves and the training `config` (a JSON dict) in the step's metadata.

    Raises `WriteError` at once when the free space of the checkpoint's file system is below the
    tree's size (nothing is written), or when an earlier asynchronous save failed.
    """
    check(mngr)
    sums = tree_sha256(tree)
    check_free_space(mngr, step, tree)
    record = {"sha256": sums} if config is None else {"sha256": sums, "config": config}
    with write_errors(mngr):
        mngr.save(
            int(step), args=ocp.args.StandardSave(tree), custom_metadata={METADATA_KEY: record}
        )


def check(mngr: ocp.CheckpointManager) -> None:
    """Raise the error of a failed asynchronous save (as a one-line `WriteError` when it is a write
    failure)."""
    with write_errors(mngr):
        mngr.check_for_errors()


def wait(mngr: ocp.CheckpointManager) -> None:
    """Wait for the manager's asynchronous saves; a failed one is raised as in `check`."""
    with write_errors(mngr):
        mngr.wait_until_finished()


@contextlib.contextmanager
def finish_saves_when_stopped(managers):
    """However the block stops (an error, Ctrl-C), the asynchronous saves of `managers` already
    under way are finished first, so every checkpoint started is complete on disk; their own errors
    do not hide the first."""
    try:
        yield
    except BaseException:
        for m in managers:
            with contextlib.suppress(Exception):
                m.wait_until_finished()
        raise


def check_free_space(mngr: ocp.CheckpointManager, step: int, tree: Any) -> None:
    """Raise a one-line `WriteError` naming the directory, the MiB needed and the MiB free when
    `tree` will not fit on the checkpoint's file system (`save` calls it; so does any other writer
    of checkpoints, e.g. the model importer). Cloud buckets are not checked."""
    directory = str(mngr.directory)
    if "://" in directory:  # a cloud bucket: no local file system to ask
        return
    need = sum(int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
               for x in jax.tree.leaves(tree))
    need = int(need * 1.02) + (256 << 10)  # the arrays, their index and the metadata files
    probe = directory
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise WriteError(
            f"Not enough space for checkpoint step {step} in {directory}: it needs "
            f"{need / 2**20:.1f} MiB and "
            f"{free / 2**20:.1f} MiB are free on that file system. Free disk space (old runs, "
            f"sample shards) or "
            "lower --config.keep_checkpoints, then rerun: training resumes from the last complete "
            "checkpoint."
        )


@contextlib.contextmanager
def write_errors(mngr: ocp.CheckpointManager):
    """Turn a failed write of orbax (an OSError, or tensorstore's RESOURCE_EXHAUSTED / permission
    errors raised as ValueError or RuntimeError) into one `WriteError` line naming the directory."""
    try:
        yield
    except DiffmemError:
        raise
    except Exception as e:
        text = str(e)
        if not (isinstance(e, OSError) or any(t in text for t in _WRITE_FAILURES)):
            raise
        reason = (
            next((t for t in _WRITE_FAILURES if t in text), None) or e.strerror or type(e).__name__
        )
        raise WriteError(
            f"Cannot write a checkpoint under {mngr.directory} ({reason}). Free disk space or make "
            f"it "
            "writable, then rerun: training resumes from the last complete checkpoint."
        ) from e


# ------------------------------------------------------------------------------------------ restore
def restore(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """Restore the checkpoint at `step` into the structure, shapes and dtypes of `like`, checked
    against the sha256 recorded at save time."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        tree = mngr.restore(int(step), args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for truncated / corrupt / mismatched files
        path = os.path.join(str(mngr.directory), str(step))
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({_one_line(e)}). It is corrupt, partial or from a "
            f"different "
            "model config. Delete that step directory to resume from an earlier checkpoint, or "
            "start a new "
            "workdir."
        ) from e
    _verify(mngr, step, tree)
    return tree


def list_models(workdir: str) -> list[str]:
    """Names of the models with checkpoints in `workdir`, sorted numerically by K (then by seed)."""
    root = Layout(workdir).checkpoint_dir()
    if not os.path.isdir(root):
        return []
    return sorted(os.listdir(root), key=sort_key)


def restore_item(directory: str, item: str, like: Any, step: int | None = None, *,
                 workdir: str | None = None) -> tuple[Any, int]:
    """Restore one top-level entry of a checkpoint (e.g. "ema_params") alone, into the structure,
    shapes and dtypes of `like` (a tree of arrays or ShapeDtypeStructs): an orbax partial restore
    that reads neither the other entries nor needs the optimizer that wrote them. Latest step unless
    `step`; returns (tree, step).
    """
    mngr = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
    step = mngr.latest_step() if step is None else step
    if step is None:
        where = f" --workdir={workdir}" if workdir else ""
        raise CheckpointError(f"No checkpoint in {directory}: train the model first "
                              f"(python bin/train.py --config=...{where}).")
    if int(step) not in mngr.all_steps():
        raise CheckpointError(
            f"No checkpoint step {step} in {directory}; its steps are {sorted(mngr.all_steps())}."
        )
    abstract = {item: jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        tree = mngr.restore(
            int(step),
            args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            ),
        )
    except Exception as e:  # orbax raises many types for truncated / corrupt / mismatched files
        raise CheckpointError(
            f"Checkpoint {os.path.join(directory, str(step))} cannot be read ({_one_line(e)}). It "
            f"is corrupt, "
            "partial or from a different model config. Delete that step directory to use an "
            "earlier "
            "checkpoint, or retrain."
        ) from e
    _verify(mngr, step, tree)
    return tree[item], int(step)


def latest_step(workdir: str, name: str) -> int | None:
    """Latest complete checkpoint step of model `name`, or None."""
    if not os.path.isdir(_dir(workdir, name)):
        return None
    return manager(workdir, name, None).latest_step()


def restore_latest(workdir: str, name: str, like: Any, step: int | None = None) -> tuple[Any, int]:
    """Restore model `name`'s checkpoint (latest unless `step` is given) into the structure of
    `like`.

    Returns (tree, step). A missing checkpoint says how to create it; a corrupt one says what to
    delete.
    """
    mngr = manager(workdir, name, None)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(
            f"No checkpoint for model {name!r} in {_dir(workdir, name)}: train it first "
            f"(python bin/train.py --config=... --workdir={workdir})."
        )
    return restore(mngr, step, like), int(step)
