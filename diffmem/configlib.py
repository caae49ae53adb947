"""Configs are code: `configs/NAME.py` defines `get_config(arg)` returning an ml_collections
ConfigDict.

This module is the one place that
  * parses the `arg` string (`"k=9,steps=20000"`, `"k=2+9+1000"` for sweeps) against typed defaults,
  * loads `path/to/config.py:arg` and applies `--config.a.b=value` overrides with clear errors,
  * checks a config's sections and keys against the one schema and values against declared ranges /
    choices (`validate`, `check`: both live in `diffmem.config_schema`, which this module builds
    on),
  * converts configs to and from JSON (the workdir's `config.json`),
  * turns a duration given in steps, epochs or images into steps.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
from typing import Any, Sequence

import ml_collections

from diffmem import config_schema
from diffmem.config_schema import check  # noqa: F401 (configlib.check: callers' name for it)
from diffmem.errors import ConfigError

__all__ = ["config_names", "config_doc", "parse_arg", "load_config_file",
           "apply_override", "parse_config_argv", "validate",
           "to_json", "from_json", "duration_to_steps", "sweep"]


# -------------------------------------------------------------------------------------- arg parsing
def _parse_value(text: str, default: Any, key: str) -> Any:
    """Parse `text` to the type of `default`; '+' separates the items of a sweep."""
    if "+" in text and not _looks_numeric(text):
        return tuple(_parse_value(part, _item_default(default), key) for part in text.split("+"))
    if isinstance(default, (tuple, list)):
        return tuple(_parse_value(text, _item_default(default), key) for _ in [0])
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        kind = type(default).__name__
        raise ConfigError(f"Config arg {key}={text!r}: expected a value of type {kind}.") from None


def _looks_numeric(text: str) -> bool:
    # "2e+3" is a number, "2+9+1000" is a sweep.
    try:
        float(text)
        return True
    except ValueError:
        return False


def _item_default(default: Any) -> Any:
    if isinstance(default, (tuple, list)):
        return default[0] if default else ""
    return default


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse a config arg string like `"k=9,steps=20000"` against typed `defaults`.

    Each value is converted to its default's type; `a+b+c` gives a tuple (a sweep). Unknown keys
    raise a ConfigError naming the valid ones. Returns a ConfigDict with every default filled in.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ConfigError(
                f"Config arg {item!r} is not of the form key=value (valid keys: "
                f"{sorted(defaults)})."
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"Unknown config arg {key!r}; valid keys: {sorted(defaults)}.")
        out[key] = _parse_value(text.strip(), defaults[key], key)
    return ml_collections.ConfigDict(out)


# ------------------------------------------------------------------------------ files and overrides
_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_names() -> list[str]:
    """The names of the configs shipped with diffmem (`diffmem/configs/<name>.py`)."""
    return sorted(f[:-3] for f in os.listdir(_CONFIG_DIR)
                  if f.endswith(".py") and not f.startswith("_"))


def config_doc(spec: str) -> str:
    """The docstring of the config file `spec` names (a shipped name or a path; its arg keys and
    commands), or a line saying why there is none."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path) and path in config_names():
        path = os.path.join(_CONFIG_DIR, f"{path}.py")
    if not os.path.isfile(path) or not path.endswith(".py"):
        return f"(no config file {path!r}: shipped configs are {config_names()})"
    with open(path) as f:
        return ast.get_docstring(ast.parse(f.read())) or "(no docstring)"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Load a shipped config by name (`cifar10[:arg]`), `path/to/config.py[:arg]` (both by calling
    its `get_config(arg)`), or a workdir's `config.json`
    (e.g. of an imported model: `--config=runs/edm/config.json`), migrated to the current schema."""
    path, _, arg = spec.partition(":")
    if path.endswith(".json") and os.path.isfile(path) and not arg:
        try:
            with open(path) as f:
                obj = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"Config file {path!r} is not readable JSON ({e}).") from None
        config = from_json(json.dumps(config_schema.migrate(obj)))
        validate(config)
        return config
    if not os.path.isfile(path) and re.fullmatch(r"[A-Za-z_]\w*", path):   # a shipped config's name
        names = config_names()
        if path not in names:
            raise ConfigError(f"No config named {path!r}; the shipped configs: {names} (or give a "
                              "path, e.g. configs/circle.py:k=9).")
        path = os.path.join(_CONFIG_DIR, f"{path}.py")
    if not os.path.isfile(path):
        raise ConfigError(
            f"Config file {path!r} does not exist (expected a shipped config's name, e.g. "
            f"circle:k=9, or a path, e.g. configs/circle.py:k=9; shipped: {config_names()})."
        )
    module_spec = importlib.util.spec_from_file_location(f"diffmem_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path!r} defines no get_config(arg) function.")
    config = module.get_config(arg or None)
    validate(config)
    return config


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set `config.<dotted> = text` parsed to the existing field's type; unknown keys list the valid
    ones."""
    node = config
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "<top level>"
            valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(f"Unknown config key {dotted!r}: {where} has no field {part!r}; "
                              f"valid keys there: {valid}.")
        if depth < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"Config key {dotted!r} is a group; set one of its fields: {sorted(current.keys())}."
        )
    value = _parse_value(text, current, dotted) if current is not None else _literal_or_str(text)
    with node.unlocked():
        if isinstance(value, tuple) and not isinstance(current, (tuple, list)):
            del node[parts[-1]]  # a sweep replaces a scalar field: drop its type lock
        node[parts[-1]] = value


def _literal_or_str(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_config_argv(argv: Sequence[str], default_spec: str | None = None
                      ) -> tuple[ml_collections.ConfigDict | None, list[str]]:
    """Pull `--config=FILE[:arg]` and `--config.a.b=value` out of argv.

    Returns (config or None, the remaining argv for absl). Errors are ConfigErrors with the valid
    keys.
    """
    spec, overrides, rest = default_spec, [], []
    args = iter(argv)
    for a in args:
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config":   # the space form, --config FILE[:arg]
            spec = next(args, None)
            if spec is None or spec.startswith("--"):
                raise ConfigError("--config needs a value: a shipped config's name (e.g. "
                                  "circle:k=9) or a path (configs/circle.py:k=9).")
        elif a.startswith("--config."):
            key, sep, val = a[len("--config."):].partition("=")
            if not sep:
                raise ConfigError(f"Override {a!r} needs a value: --config.{key}=VALUE.")
            overrides.append((key, val))
        else:
            rest.append(a)
    if spec is None:
        if overrides:
            raise ConfigError("--config.KEY=VALUE overrides need --config=path/to/config.py[:arg].")
        return None, rest
    config = load_config_file(spec)
    for key, val in overrides:
        apply_override(config, key, val)
    validate(config)
    return config, rest


# --------------------------------------------------------------------------------------- validation
def validate(config: ml_collections.ConfigDict) -> None:
    """Check the config's sections and keys against the one schema (`diffmem.config_schema`): a
    misspelt section or key is a ConfigError naming the valid ones."""
    config_schema.validate(config)


# --------------------------------------------------------------------------------------------- JSON
def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_json_default)


def _json_default(obj):
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"Config value {obj!r} is not JSON serialisable.")


def from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `to_json` (lists come back as tuples, as the config files write them)."""
    def tuplify(obj):
        if isinstance(obj, dict):
            return {k: tuplify(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return tuple(tuplify(v) for v in obj)
        return obj
    return ml_collections.ConfigDict(tuplify(json.loads(text)))


# ---------------------------------------------------------------------------------------- durations
def duration_to_steps(duration: str | int, *, dataset_size: int, batch_size: int) -> int:
    """Turn a duration into optimizer steps: an int or "N" / "Nsteps" (steps), "Nep" (epochs of the
    dataset) or "Nimg" / "Nkimg" / "Nmimg" (training images seen, EDM's unit; Gu et al. scale it
    with |D|)."""
    if isinstance(duration, int):
        return duration
    text = duration.strip().lower().replace("_", "")
    units = (("mimg", 1e6), ("kimg", 1e3), ("img", 1.0))
    for suffix, scale in units:
        if text.endswith(suffix):
            images = float(text[: -len(suffix)]) * scale
            return max(1, math.ceil(images / batch_size))
    if text.endswith("ep"):
        return max(1, math.ceil(float(text[:-2]) * dataset_size / batch_size))
    if text.endswith("steps"):
        text = text[:-5]
    try:
        return int(float(text))
    except ValueError:
        raise ConfigError(
            f"Duration {duration!r} not understood: use steps (20000), epochs (100ep) or "
            "images (200kimg)."
        ) from None


def sweep(value: Any) -> tuple:
    """A config value as a tuple of sweep items (a scalar is a one-item sweep)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
