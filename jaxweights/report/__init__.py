"""The HTML report and its figures.

style.py     the one figure style (no global backend): colour map, `Figure` grids, `save`
figures.py   the figures of a zoo's weights against accuracy (PNG + the CSV behind each)
html.py      escaping, number formats, tables, images, the page and the registry of sections
sections.py  the words about one zoo: introduction, who was left out, each zoo's sections
"""

from __future__ import annotations

from jaxweights import _deprecated
from jaxweights.report import figures
from jaxweights.report.html import (
    STYLE,
    Section,
    esc,
    fmt,
    img,
    provided_sections,
    register_section,
    registered_sections,
    render,
    table,
    verdict_html,
    write,
)
from jaxweights.report.sections import (
    STATE_WORDS,
    claim_words,
    counts_words,
    excluded_table,
    intro_html,
    left_out_words,
    seed_dispersion_html,
    zoo_sections,
)
from jaxweights.report.style import (
    CMAP,
    DPI,
    acc_norm,
    cmap,
    colorbar,
    empty,
    grid,
    new_figure,
    save,
    save_with_data,
)
from jaxweights.report.zoo_panels import zoo_figures

__all__ = [
    "figures",
    "zoo_figures",
    "CMAP",
    "DPI",
    "STATE_WORDS",
    "STYLE",
    "Section",
    "acc_norm",
    "claim_words",
    "cmap",
    "colorbar",
    "counts_words",
    "empty",
    "esc",
    "excluded_table",
    "fmt",
    "grid",
    "img",
    "intro_html",
    "left_out_words",
    "new_figure",
    "provided_sections",
    "register_section",
    "registered_sections",
    "render",
    "save",
    "save_with_data",
    "seed_dispersion_html",
    "table",
    "verdict_html",
    "write",
    "zoo_sections",
]

__getattr__ = _deprecated.forward(__name__)  # names moved in 0.2, importable under the old name for one release
