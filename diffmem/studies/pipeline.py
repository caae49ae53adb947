"""A study as an ordered list of `Stage`s, and the one "skip if done with the same settings" cache.

    stages = (Stage("train", run=train, result=TrainResult, settings=lambda ctx: {...}),
              Stage("sample", run=sample, result=SampleResult, dependencies=("train",)), ...)
    cache = Cache(folder, root=workdir)          # <folder>/<stage>.json: one record per stage
    result, status = cache.run(stage, ctx)       # status "computed" or "skipped"

A stage's `run(ctx)` returns a frozen result dataclass that derives from `Result` (`to_json` /
`from_json`; dictionaries keyed by int K in Python are keyed by str(K) in JSON). The cache skips a
stage when its record holds the same key -- a hash of the stage's settings, the result schema's
`version`, and the tokens of the records of the stages it depends on (a recomputed dependency gets a
new token, so everything downstream reruns) -- when the files the result names (`Result.files`,
relative to `root`) are all there and when the stage's own `present(ctx, result)` check (if any)
agrees. A record that cannot be read, or whose result no longer parses, makes the stage rerun."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from diffmem import report
from diffmem.report import reuse  # noqa: F401 (one output file per item; the Cache does stages)

__all__ = ["stable_hash", "Result", "Stage", "Record", "Cache", "reuse"]


def stable_hash(obj) -> str:
    """16 hex digits of the sha256 of obj's sorted-key JSON (str() of what JSON cannot hold)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ results
def _to_json(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {str(k): _to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return json.loads(json.dumps(v, default=report._default))


def _from_json(hint, v):
    """v (parsed JSON) as the annotation `hint` says: int dictionary keys, tuples, nested
    dataclasses."""
    if v is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        live = [a for a in args if a is not type(None)]
        return _from_json(live[0], v) if len(live) == 1 else v
    if dataclasses.is_dataclass(hint):
        return hint.from_json(v) if issubclass(hint, Result) else hint(**v)
    if origin in (dict, Mapping) and args:
        key = int if args[0] is int else (lambda k: k)
        return {key(k): _from_json(args[1], x) for k, x in v.items()}
    if origin is tuple:
        item = args[0] if args else Any
        return tuple(_from_json(item, x) for x in v)
    if origin is list and args:
        return [_from_json(args[0], x) for x in v]
    return v


class Result:
    """Base of a stage's frozen result dataclass: `to_json()` -> a JSON-able dict, `from_json(d)`
    back.

    Field annotations drive the parsing: `dict[int, X]` turns JSON's str keys back into int K,
    `tuple[X, ...]` lists into tuples, a nested `Result` / dataclass into its class. `files` (when a
    result has that field) are the paths, relative to the workdir, that must exist for the stage to
    count as done."""

    def to_json(self) -> dict:
        return _to_json(self)

    @classmethod
    def from_json(cls, d: Mapping):
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _from_json(hints[k], v) for k, v in d.items() if k in names})

    @property
    def output_files(self) -> tuple[str, ...]:
        return tuple(getattr(self, "files", ()) or ())


# ------------------------------------------------------------------------------------------- stages
@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a study: run(ctx) -> `result` instance; rerun when `settings(ctx)` (a JSON-able
    dict), the result schema or a dependency's record changed, or when present(ctx, result) is
    False."""
    name: str
    run: Callable[[Any], Result]
    result: type
    dependencies: tuple[str, ...] = ()
    settings: Callable[[Any], dict] = lambda ctx: {}
    present: Callable[[Any, Result], bool] | None = None
    version: int = 1


@dataclasses.dataclass(frozen=True)
class Record:
    """A finished stage as <folder>/<stage>.json holds it."""
    stage: str
    key: str
    settings: dict
    result: Result
    seconds: float
    finished_at: float
    token: str   # changes every time the stage is computed: the key of what depends on it

    def to_json(self) -> dict:
        return dict(stage=self.stage, key=self.key, settings=self.settings,
                    data=self.result.to_json(),
                    files=list(self.result.output_files), seconds=self.seconds,
                    finished_at=self.finished_at, token=self.token)


class Cache:
    """The records of a study's stages in `folder` (one JSON file each); files relative to
    `root`."""

    def __init__(self, folder: str, root: str, stages: Sequence[Stage]):
        self.folder, self.root = folder, root
        self.stages = {s.name: s for s in stages}
        self.records: dict[str, Record] = {}   # this run's or earlier runs' records, by stage

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.json")

    def read(self, stage: Stage) -> Record | None:
        """The stage's record on disk, None when absent or unreadable (the stage then reruns)."""
        path = self.path(stage.name)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                d = json.load(f)
            return Record(stage=d["stage"], key=d["key"], settings=d["settings"],
                          result=stage.result.from_json(d["data"]), seconds=d["seconds"],
                          finished_at=d["finished_at"], token=d["token"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def load(self) -> None:
        """Read every stage's record (earlier runs' records feed the keys of the stages run now)."""
        for stage in self.stages.values():
            rec = self.read(stage)
            if rec is not None:
                self.records[stage.name] = rec

    def result(self, name: str) -> Result | None:
        rec = self.records.get(name)
        return None if rec is None else rec.result

    def key(self, stage: Stage, settings: dict) -> str:
        deps = {d: getattr(self.records.get(d), "token", None) for d in stage.dependencies}
        return stable_hash(dict(stage=stage.name, settings=settings, deps=deps,
                                version=stage.version))

    def tokens(self) -> dict:
        return {name: getattr(self.records.get(name), "token", None) for name in self.stages}

    def done(self, stage: Stage, ctx, key: str) -> Record | None:
        old = self.records.get(stage.name)
        if old is None or old.key != key:
            return None
        if not all(os.path.exists(os.path.join(self.root, f)) for f in old.result.output_files):
            return None
        if stage.present is not None and not stage.present(ctx, old.result):
            return None
        return old

    def run(self, stage: Stage | str, ctx) -> tuple[Record, str]:
        """Run `stage` unless done with these settings and inputs: (record, "computed" |
        "skipped")."""
        stage = self.stages[stage] if isinstance(stage, str) else stage
        settings = stage.settings(ctx)
        key = self.key(stage, settings)
        old = self.done(stage, ctx, key)
        if old is not None:
            return old, "skipped"
        t0 = time.perf_counter()
        result = stage.run(ctx)
        if not isinstance(result, stage.result):
            raise TypeError(f"Stage {stage.name} returned {type(result).__name__}, not "
                            f"{stage.result.__name__}.")
        finished = time.time()
        rec = Record(stage=stage.name, key=key, settings=settings, result=result,
                     seconds=round(time.perf_counter() - t0, 2), finished_at=finished,
                     token=stable_hash([key, finished]))
        report.write_json(self.path(stage.name), rec.to_json())
        self.records[stage.name] = rec
        return rec, "computed"

