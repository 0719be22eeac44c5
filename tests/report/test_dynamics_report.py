"""The dynamics in the report: figures (PNG + the CSV of their data) and HTML sections from write_dynamics' tables."""

import shutil

import numpy as np
import pandas as pd
import pytest

from jaxweights.report import dynamics as report_dynamics
from jaxweights.report import style
from tests.report import figcheck


def test_figures_and_sections_follow_the_callers_masks(dynamics_zoo, tmp_path, monkeypatch):
    _, out = dynamics_zoo
    d = tmp_path / "dyn"
    shutil.copytree(out, d)
    optimal, exclude = np.array([True, False, False, False]), np.array([False, False, False, True])
    drawn = {}
    monkeypatch.setattr(style, "save", figcheck.recording(drawn))
    paths = report_dynamics.write_figures(d, optimal, exclude)
    assert [p.name for p in paths] == ["rwc.png", "modularity_depth.png", "stats_over_epochs.png", "cka_network0.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.with_suffix(".csv").exists(), p
        assert figcheck.problems(drawn[p.stem], p.stem) == [] and figcheck.png_problems(p) == []
    # the CKA figure says whose it is and why; one colour bar for its panels, all on one 0-1 scale
    cka_fig = drawn["cka_network0"]
    assert cka_fig._suptitle.get_text().startswith("Linear CKA of network 0 (the first optimal network)")
    (bar,) = [a for a in cka_fig.axes if getattr(a, "_colorbar", None)]
    assert bar.get_ylabel() == "linear CKA (1 = same representation)" and tuple(bar.get_ylim()) == (0, 1)
    # the input's epoch × epoch panel (1 everywhere: the images do not change) is left out of the figure only
    titles = [a.get_title() for a in cka_fig.axes if a.get_title()]
    assert titles == ["layer × layer, epoch 2", *(f"Dense_{k}: epoch × epoch" for k in range(3))]
    # epochs 0, 1, 2 on every epoch axis, never 0.5 or 1.5
    for name in ("rwc", "stats_over_epochs"):
        for ax in drawn[name].axes:
            if ax.axison and ax.get_xlabel() == "epoch":
                lo, hi = ax.get_xlim()
                assert {t for t in ax.get_xticks() if lo <= t <= hi} <= {0, 1, 2}, (name, ax.get_xticks())
    # rwc.png's data: the optimal group is network 0 alone, "others" the median of networks 1, 2 (3 is excluded)
    rwc, plotted = pd.read_csv(d / "rwc.csv"), pd.read_csv(d / "figures" / "rwc.csv")
    for row in plotted.itertuples():
        nets = [0] if row.group == "optimal" else [1, 2]
        v = rwc[(rwc.layer == row.layer) & (rwc.epoch == row.epoch) & rwc.network.isin(nets)].rwc_l1_ratio
        assert row.median == pytest.approx(np.median(v.to_numpy()), rel=1e-12)
    assert set(pd.read_csv(d / "figures" / "modularity_depth.csv").network) == {0, 1, 2}
    with np.load(d / "cka.npz") as z:
        cka = pd.read_csv(d / "figures" / "cka_network0.csv")
        first = cka[cka.epoch_a.isna()].cka.to_numpy().reshape(4, 4)
        np.testing.assert_array_equal(first, z["linear_layers"][0])
        inp = cka[(cka.layer_a == "input") & cka.epoch_a.notna()].cka.to_numpy().reshape(3, 3)
        np.testing.assert_array_equal(inp, z["linear_epochs"][0][0])
    sections = report_dynamics.report_sections(d, prefix="group 01")
    assert [s.title for s in sections] == [
        "group 01: Learning dynamics: how much does each layer move?",
        "group 01: Representations: CKA and linear probes",
        "group 01: Modularity over depth and pruning candidates (Lu et al. 2022)",
    ]
    assert [p.name for s in sections for p in s.figures] == [
        "rwc.png",
        "stats_over_epochs.png",
        "cka_network0.png",
        "modularity_depth.png",
    ]
