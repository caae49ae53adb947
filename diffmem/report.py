"""A study's summary: JSON with every number, and a short Markdown page with the figures.

Files are written atomically; `write_npz` is the one writer of array files (allow_pickle-free formats).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np


def _atomic(path: str, write) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    write(tmp)
    os.replace(tmp, path)
    return path


def write_json(path: str, obj: Any) -> str:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_default)
    return _atomic(path, w)


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray) or hasattr(o, "__array__"):
        return np.asarray(o).tolist()
    raise TypeError(f"{type(o)} is not JSON serialisable")


def write_npz(path: str, **arrays) -> str:
    """Save arrays to `path` (.npz) atomically; object arrays are refused (they would need pickle)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"Array {k!r} has dtype object; only numeric/string arrays are written.")
    return _atomic(path, lambda tmp: np.savez(tmp, **arrays))


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Load an .npz without pickle; a missing or corrupt file is a clear error."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}).") from e


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def write_markdown(path: str, title: str, sections: Sequence[tuple[str, str]], figures: Sequence[str] = ()) -> str:
    """A Markdown report: a title, (heading, body) sections, then the figures (paths relative to the report)."""
    base = os.path.dirname(os.path.abspath(path))
    parts = [f"# {title}\n"]
    for head, body in sections:
        parts.append(f"\n## {head}\n\n{body}\n")
    if figures:
        parts.append("\n## Figures\n")
        for fig in figures:
            rel = os.path.relpath(os.path.abspath(fig), base)
            parts.append(f"\n![{os.path.basename(fig)}]({rel})\n")

    def w(tmp):
        with open(tmp, "w") as f:
            f.write("".join(parts))
    return _atomic(path, w)
