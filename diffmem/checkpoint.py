"""All orbax use in one place: one checkpoint directory per model, found by name (K).

Layout inside a workdir:  checkpoints/<name>/<step>/...  where <name> is the model's K (`"9"`), or
`"<K>_s<seed>"` in seed sweeps. Each checkpoint holds {"params", "ema_params", "opt_state", "step"}.
orbax writes every step to a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffmem.errors import DiffmemError


class CheckpointError(DiffmemError, RuntimeError):
    """A checkpoint is missing, partial or unreadable; the message says what to do."""


def _dir(workdir: str, name: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints", name)


def manager(workdir: str, name: str, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
    """The orbax CheckpointManager of model `name` in `workdir` (created on first use)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(_dir(workdir, name), options=options)


def save(mngr: ocp.CheckpointManager, step: int, tree: Any) -> None:
    """Save `tree` at `step` (asynchronously: call `mngr.wait_until_finished()` before exiting)."""
    mngr.save(int(step), args=ocp.args.StandardSave(tree))


def restore(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """Restore the checkpoint at `step` into the structure, shapes and dtypes of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return mngr.restore(int(step), args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for truncated / corrupt / mismatched files
        path = os.path.join(str(mngr.directory), str(step))
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:300]}). It is corrupt, partial "
            f"or from a different model config. Delete that step directory to resume from an earlier "
            f"checkpoint, or start a new workdir.") from e


def list_models(workdir: str) -> list[str]:
    """Names of the models with checkpoints in `workdir`, sorted numerically by K (then by seed)."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(os.listdir(root), key=sort_key)


def sort_key(name: str) -> tuple:
    """Numeric sort key for names like '9', '1000', '1000_s2'."""
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (float("inf"),)


def latest_step(workdir: str, name: str) -> int | None:
    """Latest complete checkpoint step of model `name`, or None."""
    if not os.path.isdir(_dir(workdir, name)):
        return None
    return manager(workdir, name, None).latest_step()


def restore_latest(workdir: str, name: str, like: Any, step: int | None = None) -> tuple[Any, int]:
    """Restore model `name`'s checkpoint (latest unless `step` is given) into the structure of `like`.

    Returns (tree, step). A missing checkpoint says how to create it; a corrupt one says what to delete.
    """
    mngr = manager(workdir, name, None)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"No checkpoint for model {name!r} in {_dir(workdir, name)}: train it first "
                              f"(python bin/train.py --config=... --workdir={workdir}).")
    return restore(mngr, step, like), int(step)
