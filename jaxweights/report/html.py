"""The HTML report: escaping and number formats, tables and images, the page, and the registry of sections."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from jaxweights.io import atomic


class Section(NamedTuple):
    """One report section: a title, an HTML body and figures (PNG paths) shown below it."""

    title: str
    html: str
    figures: Sequence[Path] = ()


_SECTIONS: dict[str, Callable[[Mapping[str, Any]], Any]] = {}


def register_section(name: str, provider: Callable[[Mapping[str, Any]], Any], *, overwrite: bool = False) -> None:
    """Registers a section provider: ``provider(ctx) -> Section | list[Section] | None``.

    Args:
      name: unique name.
      provider: called with ``{"workdir", "analysis_dir", "summary", "zoo"}`` after the study's sections.
      overwrite: replace an existing provider of that name.
    """
    if name in _SECTIONS and not overwrite:
        raise ValueError(f"report section {name!r} already registered")
    _SECTIONS[name] = provider


def registered_sections() -> tuple[str, ...]:
    """Names of the registered section providers.

    Returns:
      The names, in registration order.
    """
    return tuple(_SECTIONS)


def provided_sections(ctx: Mapping[str, Any], extra: Sequence[Callable] = ()) -> list[Section]:
    """Calls the registered providers and `extra` ones with `ctx`; flattens their sections.

    Args:
      ctx: what the providers may read (workdir, analysis_dir, summary, ...).
      extra: more providers, called after the registered ones.

    Returns:
      The sections, in order.
    """
    out: list[Section] = []
    for provider in (*_SECTIONS.values(), *extra):
        got = provider(ctx)
        if got is None:
            continue
        out += [got] if isinstance(got, Section) else list(got)
    return out


def esc(x: Any) -> str:
    """HTML-escaped text of any value.

    Args:
      x: the value (``str(x)`` is escaped).

    Returns:
      The escaped text.
    """
    return html.escape(str(x))


def fmt(v: Any, digits: int = 4) -> str:
    """A value for humans: numbers to `digits` significant digits, very small or large ones in scientific notation.

    Args:
      v: the value: bools, None and ints are shown as they are, other numbers (|v| < 1e-3 or >= 1e5,
        except 0, as ``1.23e-05``), NaN as "–", anything that is not a number as ``str(v)``.
      digits: significant digits.

    Returns:
      The text.
    """
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "–"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e5):
        return f"{f:.2e}"
    return f"{f:.{digits}g}"


def table(df: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = 60) -> str:
    """An HTML table of a DataFrame (numbers formatted with `fmt`).

    Args:
      df: the table.
      columns: the columns shown (default all).
      max_rows: rows shown at most.

    Returns:
      The HTML.
    """
    if df is None or len(df) == 0:
        return "<p><em>(no rows)</em></p>"
    df = df[list(columns)] if columns else df
    more = len(df) - max_rows
    df = df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    tail = f"<p><em>{more} more rows in the CSV</em></p>" if more > 0 else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}"


def img(path: str | os.PathLike, alt: str = "") -> str:
    """An <img> with the PNG embedded as a data URI.

    Args:
      path: the PNG.
      alt: its alternative text.

    Returns:
      The HTML.
    """
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<figure><img alt="{esc(alt or Path(path).stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(Path(path).name)}</figcaption></figure>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;max-width:100%;overflow-x:auto}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.8em;color:#666}
.verdict{font-weight:600}.holds{color:#1a7f37}.reversed{color:#b35900}.ns{color:#666}
"""


def verdict_html(v: str) -> str:
    """A verdict ("holds", "reversed", "not significant") as a coloured span.

    Args:
      v: the verdict; any other text is styled as "not significant".

    Returns:
      The HTML.
    """
    cls = {"holds": "holds", "reversed": "reversed"}.get(v, "ns")
    return f'<span class="verdict {cls}">{esc(v)}</span>'


def render(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """The whole report as one HTML string (figures embedded).

    Args:
      title: the page title.
      sections: its sections.
      intro: HTML above the first section.

    Returns:
      The HTML page.
    """
    toc = "".join(f'<li><a href="#s{i}">{esc(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "".join(
        f'<h2 id="s{i}">{esc(s.title)}</h2>{s.html}' + "".join(img(f) for f in s.figures)
        for i, s in enumerate(sections)
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{intro}<ol>{toc}</ol>{body}</body></html>"
    )


def write(
    out: str | os.PathLike, title: str, sections: Sequence[Section], summary: Mapping[str, Any], intro: str = ""
) -> Path:
    """Writes ``out/report.html`` and ``out/summary.json``; returns the report's path.

    Args:
      out: the folder.
      title: the page title.
      sections: its sections.
      summary: the numbers (NaN and inf written as null).
      intro: HTML above the first section.

    Returns:
      The path of report.html.
    """
    out = Path(out)
    atomic.write_json(out / "summary.json", atomic.finite_json(summary))
    atomic.atomic_write_bytes(out / "report.html", render(title, sections, intro).encode())
    return out / "report.html"
