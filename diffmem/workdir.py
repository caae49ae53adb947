"""The workdir: a run's state (config.json, training sets, EMA parameters, sample shards) as models.

    wd = Workdir("runs/digits")
    wd.config                                   # config.json as a ConfigDict
    model = wd.model("64")                      # EMA weights of the latest checkpoint, as a `Model`
    # the empirical optimal denoiser of the same 64 images
    model = wd.model("64", kind="optimal")
    # the same from a config alone (no workdir, no training)
    model = optimal_model(config, "64")
    data = wd.read_samples("64")                # the union of every sample shard, sorted by seed

The layout of a workdir, every path in it, is `diffmem.layout` (`Layout`, which `Workdir`
extends with reading and writing); the model record is `diffmem.model.Model`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffmem import builders, checkpoint, config_schema, configlib, multihost, report
from diffmem.errors import InputError, MissingInputError
from diffmem.layout import STUDY_OUTPUTS, Layout, partial_path, sort_key, sort_names  # noqa: F401
from diffmem.layout import seeds_tag as _seeds_tag  # noqa: F401 (studies.training_time)
from diffmem.model import Model  # noqa: F401 (callers import it from here too)

__all__ = ["KINDS", "RERUN_KEYS", "DatasetChangedError", "optimal_model", "config_differences",
           "config_as_json",
           "is_writer", "Workdir", "read_shard", "read_sample_files",
           "merge_shards", "write_shard", "remove_set_files"]

KINDS = ("trained", "optimal")
RERUN_KEYS = ("steps", "schedule.duration_mimg", "sample", "study", "monitor", "log_every",
              "keep_checkpoints")
"""Config keys (dotted for nested ones) a rerun into an existing workdir may change: `steps` and
`schedule.duration_mimg` extend (or shorten) training; the others only drive later stages. Any other
difference is a different experiment."""
_LENGTH_KEYS = ("steps", "schedule.duration_mimg")


class DatasetChangedError(InputError):
    """The data a recorded K-subset selects is no longer the data the model was trained on."""


# ------------------------------------------------------------------------------------------ models
def optimal_model(config: ml_collections.ConfigDict, name: str | int) -> Model:
    """The empirical optimal denoiser of model `name`'s training set, from the config alone (no
    training)."""
    exp = builders.build(config)
    specs = {s.name: s for s in exp.members}
    return exp.optimal(_pick(specs, str(name), "this config"))


def _pick(specs: dict, name: str, where: str):
    if name not in specs:
        raise InputError(f"No model named {name!r} in {where}; its models are {sort_names(specs)}.")
    return specs[name]


# ------------------------------------------------------------------------------------------ configs
def config_differences(old: dict, new: dict, *, keep_steps: bool = False) -> list[str]:
    """Top-level keys in which two configs (as JSON dicts) differ, ignoring `RERUN_KEYS` (but not
    `steps` when keep_steps: a stage that reuses finished samples needs the same training
    length)."""
    free = [k for k in RERUN_KEYS if not (keep_steps and k in _LENGTH_KEYS)]
    old, new = _without(old, free), _without(new, free)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def config_as_json(config: ml_collections.ConfigDict) -> dict:
    """A config as config.json holds it: a JSON dict in the current schema."""
    return config_schema.migrate(json.loads(configlib.to_json(config)))


def _without(config: dict, dotted_keys) -> dict:
    """A copy of a JSON config dict with the given (dotted) keys removed."""
    config = dict(config)
    for key in dotted_keys:
        head, _, rest = key.partition(".")
        if rest and isinstance(config.get(head), dict):
            config[head] = _without(config[head], [rest])
        elif not rest:
            config.pop(head, None)
    return config


def _data_sha256(data: np.ndarray) -> str:
    data = np.ascontiguousarray(data, np.float32)
    h = hashlib.sha256(str(data.shape).encode())
    h.update(data.tobytes())
    return h.hexdigest()


is_writer = multihost.is_main_process  # only process 0 writes shared files under jax.distributed


# ------------------------------------------------------------------------------------------ Workdir
class Workdir(Layout):
    """A run's directory: its paths (`diffmem.layout.Layout`) and the config, K-subsets, models and
    samples read from them (module docstring)."""

    def __init__(self, path: str, config: ml_collections.ConfigDict | None = None):
        super().__init__(path)
        self._config = config
        self._trained_config_checked = False

    def sub_workdir(self, name: str, config: ml_collections.ConfigDict | None = None) -> "Workdir":
        """The workdir <workdir>/<name> nested in this one (the disjoint study's S1 / S2 sides)."""
        return Workdir(self._p(str(name)), config)

    # ---------------------------------------------------------------- config
    def exists(self) -> bool:
        return os.path.exists(self.config_path)

    @property
    def config(self) -> ml_collections.ConfigDict:
        if self._config is None:
            self._config = self.read_config()
        return self._config

    def read_config(self) -> ml_collections.ConfigDict:
        """config.json in the current schema (files of earlier schemas are migrated on load, not
        rewritten)."""
        return configlib.from_json(json.dumps(self._read_config_json()))

    def _read_config_json(self) -> dict:
        """config.json as a JSON dict, migrated to the current schema (`config_schema.migrate`)."""
        return config_schema.migrate(self._read_raw_config_json())

    def _read_raw_config_json(self) -> dict:
        path = self.config_path
        if not os.path.exists(path):
            raise MissingInputError(
                f"{path} not found: {self.path} is not a diffmem workdir. Train into it first "
                f"(python bin/train.py --config=... --workdir={self.path}), or sample the optimal "
                "denoiser with --config=... --kind=optimal."
            )
        try:
            with open(path) as f:
                obj = json.load(f)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            return obj
        except (ValueError, UnicodeDecodeError) as e:
            raise configlib.ConfigError(
                f"{path} is corrupt or truncated ({e}). Nothing else in {self.path} was touched: "
                f"delete "
                "config.json and rerun bin/train.py with the config you trained with (it rewrites "
                "the file and "
                "resumes from the checkpoints)."
            ) from None

    def check_config(self, config: ml_collections.ConfigDict, *, keep_steps: bool = False) -> None:
        """Refuse a config that differs from config.json beyond `RERUN_KEYS` (no config.json:
        nothing to check)."""
        if not self.exists():
            return
        new = config_as_json(config)
        diff = config_differences(self._read_config_json(), new, keep_steps=keep_steps)
        if diff:
            raise configlib.ConfigError(
                f"{self.path} holds a run with a different config (differs in {diff}); finished "
                f"work is never "
                "overwritten: use a new --workdir, or the same config to resume."
            )

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Write config.json (checked against the schema, its defaults filled), or check a rerun's
        config against it (`check_config`) and record the new one."""
        configlib.validate(config)
        self.check_config(config)
        if is_writer():
            os.makedirs(self.path, exist_ok=True)
            report.write_json(self.config_path, config_as_json(config))
        self._config = config
        for cached in ("_specs", "experiment"):   # built from the config: rebuilt from the new one
            self.__dict__.pop(cached, None)

    def check_trained_config(self) -> None:
        """Refuse a config.json edited after training: compare it with the config recorded in the
        checkpoints (`diffmem.checkpoint.save`), ignoring `RERUN_KEYS`. Checkpoints written before
        configs were recorded are not checked."""
        if self._trained_config_checked:
            return
        root = self.checkpoint_dir()
        for name in checkpoint.list_models(self.path):
            trained = checkpoint.recorded_config(os.path.join(root, name))
            if trained is None:
                continue
            diff = config_differences(config_schema.migrate(trained), self._read_config_json())
            if diff:
                raise configlib.ConfigError(
                    f"{self.config_path} was changed after training: it differs in {diff} from the "
                    f"config model "
                    f"{name} was trained with (recorded in its checkpoints under {root}). Put "
                    f"config.json back "
                    f"as it was (the training config is the 'diffmem' entry of "
                    f"{os.path.join(root, name)}/<step>/"
                    "_CHECKPOINT_METADATA), or train into a new workdir."
                )
            break
        self._trained_config_checked = True

    # ---------------------------------------------------------------- training sets
    def _read_subset(self, k: int) -> dict | None:
        path = self.subset_path(k)
        if not os.path.exists(path):
            return None
        z = _read_npz(
            path,
            "delete it to recompute the subset from the config (the dataset must be unchanged)",
        )
        if "indices" not in z or "sha256" not in z:
            raise InputError(
                f"{path} has no indices / sha256 (keys {sorted(z)}): delete it to recompute the "
                f"subset."
            )
        return dict(indices=z["indices"].astype(np.int64), sha256=str(z["sha256"]))

    @functools.cached_property
    def _specs(self) -> dict[str, builders.ModelSpec]:
        return {s.name: s for s in self.specs()}

    @functools.cached_property
    def experiment(self) -> builders.Experiment:
        """The workdir's experiment (`builders.build` of its config), its members the recorded
        subsets."""
        return builders.build(self.config, members=list(self._specs.values()))

    def specs(self, config: ml_collections.ConfigDict | None = None, *, record: bool = False
              ) -> list[builders.ModelSpec]:
        """The sweep's members with their training sets. K-subsets recorded in subsets/<K>.npz are
        used and checked (a different training set is a `DatasetChangedError`); missing ones are
        computed from the config (workdirs written before subsets were recorded) and, with
        record=True (training), written."""
        config = self.config if config is None else config
        pool = builders.load_pool(config)
        ks = sorted({int(k) for k in configlib.sweep(config.data.k)})
        stored = {k: s for k in ks if (s := self._read_subset(k)) is not None}
        for k, s in stored.items():
            if (
                s["indices"].shape != (k,)
                or s["indices"].min(initial=0) < 0
                or s["indices"].max(initial=0) >= len(pool)
            ):
                raise DatasetChangedError(
                    f"{self.subset_path(k)} selects rows outside the dataset ({len(pool)} "
                    f"examples): the dataset "
                    f"changed since training. Restore the original data (config.data), or train "
                    f"into a new workdir."
                )
        specs = builders.model_specs(
            config, pool=pool, indices={k: s["indices"] for k, s in stored.items()}
        )
        for spec in specs:
            s = stored.get(spec.k)
            if s is not None and _data_sha256(spec.data) != s["sha256"]:
                raise DatasetChangedError(
                    f"The training set of K = {spec.k} is not the one the model was trained on: "
                    f"the data at the "
                    f"indices in {self.subset_path(spec.k)} has changed (sha256 differs). Restore "
                    f"the original "
                    "dataset (config.data: source, data_dir, preprocessing), or train into a new "
                    "workdir."
                )
        if record and is_writer():
            for spec in specs:
                if spec.k not in stored:
                    stored[spec.k] = {}
                    report.write_npz(self.subset_path(spec.k),
                                     indices=np.asarray(spec.indices, np.int64),
                                     sha256=np.str_(_data_sha256(spec.data)),
                                     pool_size=np.int64(len(pool)))
        return specs

    def spec(self, name: str) -> builders.ModelSpec:
        return _pick(self._specs, str(name), self.path)

    def names(self) -> list[str]:
        return sort_names(self._specs)

    # ---------------------------------------------------------------- models
    def model(self, name: str | int, step: int | None = None, kind: str = "trained") -> Model:
        """Model `name` (its K, or K_s<seed>): the EMA weights of the latest checkpoint (or `step`),
        or with kind="optimal" the empirical optimal denoiser of its training set."""
        if kind not in KINDS:
            raise InputError(f"Unknown model kind {kind!r}; choose one of {KINDS}.")
        spec = self.spec(str(name))
        exp = self.experiment
        if kind == "optimal":
            if step is not None:
                raise InputError("The optimal denoiser has no checkpoints: drop step.")
            return exp.optimal(spec)
        self.check_trained_config()
        params, step = checkpoint.restore_item(
            self.checkpoint_dir(spec.name), "ema_params", exp.init_like(), step, workdir=self.path
        )
        return exp.model(spec, jax.tree.map(jnp.asarray, params), step)

    # ---------------------------------------------------------------- samples
    def read_samples(self, name: str, kind: str = "trained", step: int | None = None,
                     files: Sequence[str] | None = None) -> dict:
        """The union of a set's shards: {samples (N, *S) float32, seeds (N,) int64 sorted, step,
        sampler, settings (dict), files, info}. info: per-sample diagnostics every shard holds,
        {name: (N,)} in seed order (the KS sampler's converged and iterations; {} for the other
        samplers). Shards with different settings are an error naming both files; a seed in two
        shards of the same settings is kept once."""
        files = list(self.sample_files(name, kind, step) if files is None else files)
        if not files:
            raise MissingInputError(
                f"No samples in {self.samples_dir(name, kind, step)}: sample the model first "
                f"(python bin/sample.py --workdir={self.path} --k={name}"
                f"{' --kind=optimal' if kind == 'optimal' else ''})."
            )
        return read_sample_files(files)


# ------------------------------------------------------------------------------------ sample shards
def _read_npz(path: str, what_to_do: str) -> dict:
    try:
        return report.read_npz(path)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise InputError(
            f"{path} is corrupt or truncated ({str(e)[:200]}); nothing was changed: {what_to_do}."
        ) from None


def read_shard(path: str) -> dict:
    """One sample file: {samples, seeds, settings, path, info}. info: the sampler's per-sample
    diagnostics {name: (N,)} (e.g. the KS sampler's converged / iterations; {} for others). Files
    from before shards (settings as separate arrays) are read too."""
    z = _read_npz(
        path, "delete it and rerun bin/sample.py for its seeds, or rerun with --overwrite"
    )
    if "samples" not in z:
        raise InputError(
            f"{path} has no 'samples' array (keys {sorted(z)}); write it with bin/sample.py."
        )
    x = np.asarray(z["samples"], np.float32)
    seeds = np.asarray(z.get("seeds", np.arange(len(x))), np.int64)
    if len(seeds) != len(x):
        raise InputError(
            f"{path}: {len(x)} samples but {len(seeds)} seeds; delete it and resample."
        )
    names = json.loads(str(z["info"])) if "info" in z else []
    info = {k: np.asarray(z[k]) for k in names}
    if any(v.shape != (len(x),) for v in info.values()):
        raise InputError(f"{path}: per-sample arrays {names} do not match its {len(x)} samples; "
                         "delete it and resample.")
    if "settings" in z:
        settings = json.loads(str(z["settings"]))
    else:  # one-file sets written before shards
        settings = {k: _scalar(v) for k, v in z.items() if k not in ("samples", "seeds")}
    # the sampler's name of earlier schemas ("ddpm": now "ddpm_ancestral")
    if "sampler" in settings:
        settings["sampler"] = config_schema.RENAMED["sample.sampler"].get(
            settings["sampler"], settings["sampler"]
        )
    return dict(samples=x, seeds=seeds, settings=settings, path=path, info=info)


def read_sample_files(files: Sequence[str]) -> dict:
    """The union of the given shard files of one set (`Workdir.read_samples`)."""
    return merge_shards([read_shard(f) for f in files])


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def merge_shards(shards: Sequence[dict]) -> dict:
    """Merge shards of one set, sorted by seed (module docstring); all must share their settings."""
    first = shards[0]
    for s in shards[1:]:
        if s["settings"] != first["settings"]:
            raise InputError(
                f"{s['path']} and {first['path']} hold samples of different settings "
                f"({report.settings_difference(first['settings'], s['settings'])}): one sample set "
                f"comes from one model "
                "and sampler. Delete the files you do not want, or resample the set with "
                "--overwrite."
            )
        if s["samples"].shape[1:] != first["samples"].shape[1:]:
            raise InputError(f"{s['path']} and {first['path']} hold samples of different shapes.")
    seeds = np.concatenate([s["seeds"] for s in shards])
    x = np.concatenate([s["samples"] for s in shards])
    # sorted; duplicates (same settings) kept once
    seeds, keep = np.unique(seeds, return_index=True)
    settings = first["settings"]
    # Per-sample diagnostics every shard holds (a shard written before they were recorded has none).
    names = [k for k in first.get("info", {}) if all(k in s.get("info", {}) for s in shards)]
    info = {k: np.concatenate([s["info"][k] for s in shards])[keep] for k in names}
    return dict(samples=x[keep], seeds=seeds, settings=settings, step=int(settings.get("step", -1)),
                sampler=str(settings.get("sampler", "")), files=[s["path"] for s in shards],
                info=info)


_SHARD_KEYS = ("samples", "seeds", "settings", "step", "sampler", "info")


def write_shard(path: str, samples: np.ndarray, seeds: np.ndarray, settings: dict,
                info: dict | None = None) -> str:
    """Write one shard atomically (process 0 only): samples, seeds and the settings as JSON (plus
    step and sampler as plain arrays for quick inspection). info: per-sample diagnostics {name:
    (N,)}, saved as arrays of those names with their list in `info` (JSON)."""
    if not is_writer():
        return path
    info = {k: np.asarray(v) for k, v in (info or {}).items()}
    bad = [k for k, v in info.items() if k in _SHARD_KEYS or v.shape != (len(samples),)]
    if bad:
        raise InputError(f"Per-sample arrays {bad} clash with {_SHARD_KEYS} or do not hold one "
                         "value per sample.")
    extra = dict(info, info=np.str_(json.dumps(sorted(info)))) if info else {}
    return report.write_npz(path, samples=np.asarray(samples, np.float32),
                            seeds=np.asarray(seeds, np.int64),
                            settings=np.str_(json.dumps(settings, sort_keys=True)),
                            step=np.int64(settings.get("step", -1)),
                            sampler=np.str_(settings.get("sampler", "")), **extra)


def remove_set_files(paths: Sequence[str]) -> None:
    """Delete sample files (and a shard's unfinished batches) being replaced under --overwrite
    (process 0)."""
    if not is_writer():
        return
    for p in paths:
        if os.path.exists(p):
            os.remove(p)
        shutil.rmtree(partial_path(p), ignore_errors=True)
