"""The dynamics in the report: figures (PNG + the CSV of their data) and HTML sections from write_dynamics' tables."""

import shutil

import numpy as np
import pandas as pd
import pytest

from jaxweights.report import dynamics as report_dynamics


def test_figures_and_sections_follow_the_callers_masks(dynamics_zoo, tmp_path):
    _, out = dynamics_zoo
    d = tmp_path / "dyn"
    shutil.copytree(out, d)
    optimal, exclude = np.array([True, False, False, False]), np.array([False, False, False, True])
    paths = report_dynamics.write_figures(d, optimal, exclude)
    assert [p.name for p in paths] == ["rwc.png", "modularity_depth.png", "stats_over_epochs.png", "cka_network0.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.with_suffix(".csv").exists(), p
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
