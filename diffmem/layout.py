"""Every path of a workdir, and nothing else: no JAX, no config, no reading of arrays.

`Layout(path)` names the files of a run's directory; `diffmem.workdir.Workdir` is a `Layout` that
also reads and writes them. Nothing outside this module builds these paths:

    config.json                       the config (`Workdir.write_config`; a rerun may change only
                                      `workdir.RERUN_KEYS`; files of earlier schemas are migrated on
                                      load, `config_schema.migrate`)
    .diffmem.lock                     the one-writer lock of a training (`lock_path`,
                                      `diffmem.lock`)
    metrics.jsonl                     training metrics
    subsets/<K>.npz                   the K-subset: `indices` into the dataset pool and `sha256` of
                                      the training set they select, written at train time; a changed
                                      dataset is an error, never a silently different training set
    checkpoints/<name>/<step>/        orbax checkpoints (`diffmem.checkpoint`)
    samples/<set>/<shard>.npz         sample shards, set = <name> (latest checkpoint), <name>@<step>
                                      (an earlier one) or optimal/<name>; a shard holds samples (N,
                                      *S), seeds (N,) and its settings (JSON); readers merge the
                                      shards of a set
    samples/<set>/<shard>.partial/    an unfinished shard's batches, <start>.npz (`partial_path`)
    samples/<set>.npz                 a whole set in one file (workdirs written before shards; still
                                      read)
    samples/<set>.png                 a picture of the set
    classify/[optimal/]<name>.{npz,json}, classify/summary.json, report.md, figures
                                      the memorization study (`classify_paths`, `classify_file`)
    reproducibility/...               Zhang et al.'s scores (reproducibility study)
    study/...                         the circle study (`study_dir`), or the K-sweep study's
                                      stages/, report.{json,md,html} and figures
                                      (`study_output_dir("study")`)
    <study>/...                       other studies' outputs (`study_output_dir(study, ...)`), study
                                      one of `STUDY_OUTPUTS`:
      mechanisms/                       critical_times/, jacobian/, energy/, phase_times.json,
                                        molrg*.{json,png} (diffmem.studies.mechanisms)
      training_time/                    <name>/step_<step>.npz (f_mem of each snapshot),
                                        summary.json, figures, monitor_stops.json
                                        (diffmem.studies.training_time, diffmem.monitor)
      disjoint/                         N<N>.npz, summary.json, report.md, figures (Kadkhodaie et
                                        al.'s two-disjoint-sets study, diffmem.studies.disjoint)
      machines/                         calibration and machine-vs-network agreement
                                        (diffmem.machines.agreement)
    S1/, S2/                          the disjoint study's two sides, each a whole workdir of this
                                      layout (`sub_workdir`)

An EMM root (`diffmem.studies.memorization.emm`) is a folder of such workdirs, k<K>/ (`emm_member`),
beside its emm.json (`emm_path`).

<name> is a model's K ("64"), or "<K>_s<seed>" in seed sweeps.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np

from diffmem.errors import InputError

__all__ = ["LOCK_NAME", "STUDY_OUTPUTS", "sort_key", "sort_names", "seeds_tag", "partial_path",
           "Layout"]

LOCK_NAME = ".diffmem.lock"
"""The writer lock's file name in a workdir (`Layout.lock_path`, `diffmem.lock`)."""
STUDY_OUTPUTS = ("mechanisms", "disjoint", "training_time", "machines", "study")
"""The studies whose outputs live in <workdir>/<study>/ (`Layout.study_output_dir`)."""

_SET = re.compile(r"^(?P<name>\d+(?:_s\d+)?)(?:@(?P<step>-?\d+))?$")


def sort_key(name: str) -> tuple:
    """Numeric sort key for model names like '9', '1000', '1000_s2'."""
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (float("inf"),)


def sort_names(names) -> list[str]:
    return sorted(names, key=sort_key)


def seeds_tag(seeds: np.ndarray) -> str:
    """The hash of a seed list in its shard's file name (`Layout.shard_path`)."""
    return hashlib.sha256(np.ascontiguousarray(seeds, np.int64).tobytes()).hexdigest()[:10]


def partial_path(shard: str, start: int | None = None) -> str:
    """<shard>.partial/: the batches of an unfinished shard, saved as they finish; with `start`, the
    file of the batch starting at that row (<start:010d>.npz)."""
    folder = shard[:-4] + ".partial"
    return folder if start is None else os.path.join(folder, f"{int(start):010d}.npz")


class Layout:
    """The paths of a run's directory (module docstring); reads only directory listings."""

    def __init__(self, path: str):
        self.path = str(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def _p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    # ---------------------------------------------------------------- paths of the stages
    @property
    def config_path(self) -> str:
        return self._p("config.json")

    @property
    def metrics_path(self) -> str:
        return self._p("metrics.jsonl")

    def checkpoint_dir(self, name: str | None = None) -> str:
        root = os.path.join(os.path.abspath(self.path), "checkpoints")
        return root if name is None else os.path.join(root, str(name))

    def subset_path(self, k: int) -> str:
        return self._p("subsets", f"{int(k)}.npz")

    def classify_dir(self, kind: str | None = None) -> str:
        """classify/ (kind None or "trained") or classify/optimal/."""
        return self._p("classify", *(("optimal",) if kind == "optimal" else ()))

    def classify_file(self, filename: str) -> str:
        """classify/<filename>: the memorization study's summary.json, report.md and figures."""
        return self._p("classify", filename)

    def classify_paths(self, name: str, kind: str = "trained") -> tuple[str, str]:
        base = os.path.join(self.classify_dir(kind), str(name))
        return base + ".npz", base + ".json"

    def reproducibility_dir(self, *parts: str) -> str:
        """reproducibility/<parts...> (parts: a file name)."""
        return self._p("reproducibility", *parts)

    def study_dir(self, *parts: str) -> str:
        """study/<parts...>: the circle study's outputs (parts: a file name)."""
        return self._p("study", *parts)

    @property
    def lock_path(self) -> str:
        """.diffmem.lock: the one-writer lock of a training (`diffmem.lock`)."""
        return self._p(LOCK_NAME)

    # ---------------------------------------------------------------- EMM roots, studies, nesting
    @property
    def emm_path(self) -> str:
        """emm.json of an EMM root: this folder holds one workdir per K (`emm_member`)."""
        return self._p("emm.json")

    def emm_member(self, k: int):
        """The workdir k<K> of an EMM root (Gu et al.'s effective model memorization, one model per
        K), of this object's class (`sub_workdir`)."""
        return self.sub_workdir(f"k{int(k)}")

    def study_output_dir(self, study: str, *parts: str) -> str:
        """<workdir>/<study>/<parts...>: where a study of `STUDY_OUTPUTS` writes (parts: sub-folders
        or a file)."""
        if study not in STUDY_OUTPUTS:
            raise InputError(f"Unknown study {study!r}; studies with an output folder: "
                             f"{list(STUDY_OUTPUTS)}.")
        return self._p(study, *(str(p) for p in parts))

    def sub_workdir(self, name: str) -> "Layout":
        """The layout of <workdir>/<name> nested in this one (the disjoint study's S1 / S2
        sides)."""
        return Layout(self._p(str(name)))

    def relative(self, path: str) -> str:
        """`path` relative to the workdir (what reports record: no absolute paths)."""
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.path))

    def path_of(self, relative: str) -> str:
        """The inverse of `relative`."""
        return os.path.join(self.path, relative)

    # ---------------------------------------------------------------- samples
    def sample_set(self, name: str, kind: str = "trained", step: int | None = None) -> str:
        """The set's name relative to samples/: '<name>', '<name>@<step>' or 'optimal/<name>'."""
        if kind == "optimal":
            return f"optimal/{name}"
        return str(name) if step is None else f"{name}@{int(step)}"

    def samples_dir(self, name: str, kind: str = "trained", step: int | None = None) -> str:
        return self._p("samples", *self.sample_set(name, kind, step).split("/"))

    def picture_path(self, name: str, kind: str = "trained", step: int | None = None) -> str:
        return self.samples_dir(name, kind, step) + ".png"

    partial_path = staticmethod(partial_path)

    def shard_path(self, name: str, kind: str, step: int | None, seeds: np.ndarray) -> str:
        """Where a job writes the shard of `seeds`: <first>-<last>_<hash of the seed list>.npz."""
        seeds = np.asarray(seeds, np.int64)
        return os.path.join(self.samples_dir(name, kind, step),
                            f"{seeds[0]}-{seeds[-1]}_{seeds_tag(seeds)}.npz")

    def sample_files(self, name: str, kind: str = "trained", step: int | None = None) -> list[str]:
        """The shard files of a set (and its one-file form from before shards), sorted."""
        folder = self.samples_dir(name, kind, step)
        files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                 if f.endswith(".npz") and not f.startswith(".")] if os.path.isdir(folder) else []
        legacy = folder + ".npz"
        return ([legacy] if os.path.isfile(legacy) else []) + files

    def has_samples(self, name: str, kind: str = "trained", step: int | None = None) -> bool:
        return bool(self.sample_files(name, kind, step))

    def sample_sets(self) -> list[tuple[str, str, int | None]]:
        """Every sampled set as (name, kind, step) (step None: latest checkpoint), sorted by kind
        then K."""
        out = []
        for kind, sub in (("trained", ()), ("optimal", ("optimal",))):
            folder = self._p("samples", *sub)
            entries = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            seen = set()
            for entry in entries:
                base = entry[:-4] if entry.endswith(".npz") else entry
                m = _SET.match(base)
                if not m or base in seen or (kind == "optimal" and m["step"] is not None):
                    continue
                step = None if m["step"] is None else int(m["step"])
                if self.sample_files(m["name"], kind, step):
                    seen.add(base)
                    out.append((m["name"], kind, step))
        return sorted(out, key=lambda s: (s[1] != "trained", sort_key(s[0]),
                                          -1 if s[2] is None else s[2]))
