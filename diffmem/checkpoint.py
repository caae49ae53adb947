"""All orbax use in one place: one checkpoint directory per model, found by name (K).

Each model's directory is `Workdir(path).checkpoint_dir(name)` (checkpoints/<name>/<step>/..., <name> the
model's K `"9"`, or `"<K>_s<seed>"` in seed sweeps). Each checkpoint holds {"params", "ema_params",
"opt_state", "step"}; `restore_item` reads one of them alone (the sampling stages read "ema_params").
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
    from diffmem.workdir import Workdir  # the layout lives there
    return Workdir(workdir).checkpoint_dir(name)


def manager(workdir: str, name: str, max_to_keep: int | None = 2, keep_steps=()) -> ocp.CheckpointManager:
    """The orbax CheckpointManager of model `name` in `workdir` (created on first use): it keeps the latest
    `max_to_keep` checkpoints (None: all) and, besides them, every step of `keep_steps` (the snapshots of
    `config.monitor.snapshots`, `diffmem.monitor`)."""
    if keep_steps and max_to_keep is not None:
        from orbax.checkpoint import checkpoint_managers as policies
        keep = policies.AnyPreservationPolicy([policies.LatestN(max_to_keep),
                                               policies.CustomSteps(sorted(int(s) for s in keep_steps))])
        options = ocp.CheckpointManagerOptions(create=True, preservation_policy=keep)
    else:
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
    from diffmem.workdir import Workdir
    root = Workdir(workdir).checkpoint_dir()
    if not os.path.isdir(root):
        return []
    return sorted(os.listdir(root), key=sort_key)


def sort_key(name: str) -> tuple:
    """Numeric sort key for names like '9', '1000', '1000_s2'."""
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (float("inf"),)


def restore_item(directory: str, item: str, like: Any, step: int | None = None, *,
                 workdir: str | None = None) -> tuple[Any, int]:
    """Restore one top-level entry of a checkpoint (e.g. "ema_params") alone, into the structure, shapes and
    dtypes of `like` (a tree of arrays or ShapeDtypeStructs): an orbax partial restore that reads neither
    the other entries nor needs the optimizer that wrote them. Latest step unless `step`; returns (tree, step).
    """
    mngr = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
    step = mngr.latest_step() if step is None else step
    if step is None:
        where = f" --workdir={workdir}" if workdir else ""
        raise CheckpointError(f"No checkpoint in {directory}: train the model first "
                              f"(python bin/train.py --config=...{where}).")
    if int(step) not in mngr.all_steps():
        raise CheckpointError(f"No checkpoint step {step} in {directory}; its steps are {sorted(mngr.all_steps())}.")
    abstract = {item: jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        tree = mngr.restore(int(step), args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                                                   partial_restore=True))
    except Exception as e:  # orbax raises many types for truncated / corrupt / mismatched files
        raise CheckpointError(
            f"Checkpoint {os.path.join(directory, str(step))} cannot be read ({type(e).__name__}: {str(e)[:300]}). "
            f"It is corrupt, partial or from a different model config. Delete that step directory to use an "
            f"earlier checkpoint, or retrain.") from e
    return tree[item], int(step)


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
