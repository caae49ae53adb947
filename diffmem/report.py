"""A study's summary: JSON with every number, and a short Markdown page with the figures.

Files are written atomically (`diffmem.atomic`, process 0 only under jax.distributed); `write_npz`
is the one writer of array files (allow_pickle-free formats).
"""
from __future__ import annotations

import base64
import html
import json
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from diffmem import atomic
from diffmem.errors import InputError, MissingInputError, OutputExistsError, WriteError

__all__ = ["settings_difference", "read_settings", "reuse", "write_json", "write_npz", "read_npz",
           "markdown_table", "markdown_to_html", "section_markdown", "write_sections_markdown",
           "write_sections_html", "write_markdown", "read_jsonl", "write_jsonl", "JsonlAppender"]


def write_json(path: str, obj: Any) -> str:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_default)
    return atomic.write(path, w)


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray) or hasattr(o, "__array__"):
        return np.asarray(o).tolist()
    raise TypeError(f"{type(o)} is not JSON serialisable")


def write_npz(path: str, **arrays) -> str:
    """Save arrays to `path` (.npz) atomically; object arrays are refused (they would need
    pickle)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(
                f"Array {k!r} has dtype object; only numeric/string arrays are written."
            )
    return atomic.write(path, lambda tmp: np.savez(tmp, **arrays))


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Load an .npz without pickle; a missing or corrupt file is a clear error."""
    if not os.path.exists(path):
        raise MissingInputError(f"{path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise InputError(
            f"{path} is not a readable .npz file ({type(e).__name__}: {e}); it is truncated or "
            "corrupt: delete it and rerun the stage that writes it."
        ) from e


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join(
        "| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows
    )


def markdown_to_html(text: str) -> str:
    """Markdown (CommonMark with tables; raw HTML escaped) as HTML. Image lines are dropped: a
    self-contained page embeds its figures itself."""
    from markdown_it import MarkdownIt
    kept = "\n".join(line for line in text.splitlines() if not line.strip().startswith("!["))
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(kept)


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def section_markdown(section: Mapping[str, Any]) -> str:
    """A section's text and table as Markdown (no heading, no figures)."""
    parts = [section.get("text", "") or ""]
    if section.get("rows"):
        parts.append(markdown_table(section["rows"], section["columns"]))
    return "\n\n".join(p for p in parts if p)


def write_sections_markdown(path: str, title: str, sections: Sequence[Mapping[str, Any]],
                            footer: str = "") -> str:
    """A Markdown page: `title`, then per section ({"title", "text", "rows" + "columns", "figures"})
    its heading, text, table and figures (paths made relative to the page)."""
    base = os.path.dirname(os.path.abspath(path))
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"\n## {s['title']}\n\n{s.get('text', '')}\n")
        if s.get("rows"):
            parts.append("\n" + markdown_table(s["rows"], s["columns"]))
        for fig in s.get("figures", []):
            rel = os.path.relpath(os.path.abspath(fig), base)
            parts.append(f"\n![{os.path.basename(fig)}]({rel})\n")
    if footer:
        parts.append(f"\n{footer}\n")
    return atomic.write_text(path, "".join(parts))


_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
          "figcaption{font-size:0.75em;color:#666}")


def write_sections_html(path: str, title: str, sections: Sequence[Mapping[str, Any]],
                        footer: str = "") -> str:
    """The same page as `write_sections_markdown`, self-contained: Markdown rendered by
    markdown-it-py and every PNG figure inline as a base64 data URI (no file references)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s['title'])}</h2>")
        body.append(markdown_to_html(section_markdown(s)))
        for fig in s.get("figures", []):
            if fig and os.path.exists(fig) and fig.endswith(".png"):
                name = html.escape(os.path.basename(fig))
                body.append(f'<figure><img alt="{name}" src="{_png_data_uri(fig)}">'
                            f"<figcaption>{name}</figcaption></figure>")
    if footer:
        body.append(markdown_to_html(footer))
    page = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return atomic.write_text(path, page)


def write_markdown(
    path: str, title: str, sections: Sequence[tuple[str, str]], figures: Sequence[str] = ()
) -> str:
    """A Markdown report: a title, (heading, body) sections, then the figures (paths relative to the
    report)."""
    base = os.path.dirname(os.path.abspath(path))
    parts = [f"# {title}\n"]
    for head, body in sections:
        parts.append(f"\n## {head}\n\n{body}\n")
    if figures:
        parts.append("\n## Figures\n")
        for fig in figures:
            rel = os.path.relpath(os.path.abspath(fig), base)
            parts.append(f"\n![{os.path.basename(fig)}]({rel})\n")

    return atomic.write_text(path, "".join(parts))


# ------------------------------------------------------------------------ JSON-lines logs (metrics)
def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file (one object a line); [] if it does not exist.

    A run killed while appending leaves a truncated last line: it is dropped with a warning. A bad
    line elsewhere means the file was damaged otherwise, which is an `InputError` naming the line.
    """
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if all(not rest.strip() for rest in lines[n:]):
                warnings.warn(
                    f"{path}: dropped a truncated last line ({line[:60]!r}), left by an "
                    f"interrupted run."
                )
                break
            raise InputError(
                f"{path}, line {n}, is not a JSON object ({e}): the file is damaged; repair or "
                "delete that line (or the file) and rerun."
            ) from e
        records.append(record)
    return records


def write_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> str:
    """Replace `path` atomically with these records, one JSON object a line."""
    return atomic.write_text(path, "".join(json.dumps(r, default=_default) + "\n" for r in records))


class JsonlAppender:
    """Appends records to a JSON-lines file, flushed line by line (`with JsonlAppender(path) as log:
    log.write({...})`). Only the writing process (`atomic.is_writer`) opens the file; failures to
    open or write raise `WriteError` naming the path."""

    def __init__(self, path: str):
        self.path, self._file = path, None

    def __enter__(self):
        if atomic.is_writer():
            try:
                self._file = open(self.path, "a", encoding="utf-8")
            except OSError as e:
                raise self._error(e) from e
        return self

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, default=_default) + "\n")
            self._file.flush()
        except OSError as e:
            raise self._error(e) from e

    def __exit__(self, exc_type, *_):
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            # a failed write left unflushed bytes; report it unless already raising
            except OSError as e:
                if exc_type is None:
                    raise self._error(e) from e

    def _error(self, e: OSError) -> WriteError:
        return WriteError(
            f"Cannot write {self.path}: {e.strerror or e} (errno {e.errno}). Check that the "
            "directory is writable and the disk has space; checkpoints already saved are kept."
        )


# ------------------------------------------------------------------------- one output file per item
def settings_difference(old: Mapping, new: Mapping) -> str:
    """The keys in which two settings dicts differ, as "key: old -> new, ..."."""
    return ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))


def read_settings(path: str) -> tuple[dict, Any]:
    """(settings, contents) of a result file: a .npz whose `settings` array holds JSON (contents:
    its arrays), or a JSON object with a "settings" key (contents: the object)."""
    if path.endswith(".npz"):
        z = read_npz(path)
        return json.loads(str(z["settings"])), z
    with open(path) as f:
        obj = json.load(f)
    return obj["settings"], obj


def reuse(path: str, settings: Mapping, *, overwrite: bool = False, what: str = "results"):
    """The "skip if done with the same settings" check of one output file (the stages' `Cache` does
    the same for a study's stages, `diffmem.studies.pipeline.Cache`): the file's contents
    (`read_settings`) when it was computed with `settings`; None when it does not exist, cannot be
    read, or (overwrite=True) holds other settings, so the caller computes and writes it. Other
    settings without overwrite raise `OutputExistsError` naming the differences: finished work is
    never overwritten silently."""
    if not os.path.exists(path):
        return None
    try:
        old, contents = read_settings(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    settings = json.loads(json.dumps(settings, default=str))
    if old == settings:
        return contents
    if overwrite:
        return None
    raise OutputExistsError(
        f"{path} holds {what} of other settings ({settings_difference(old, settings)}); "
        "finished work is never overwritten: delete it, pass --overwrite, or choose "
        "another output to recompute."
    )
