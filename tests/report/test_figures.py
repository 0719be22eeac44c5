"""The figure style's helpers and the figure checks, on constructed figures with known faults; the figures of
`analyze-params` and of a study's depth profile, checked the same way."""

import numpy as np
import pandas as pd
import pytest

from jaxweights.report import figures, params_figures, style
from tests.report import figcheck


def test_the_checks_find_each_fault_of_a_badly_made_figure():
    fig, axes = style.new_figure(2, 2, figsize=(6, 5))
    fig.set_layout_engine(None)  # no spacing: the titles below run into the tick labels above
    fig.subplots_adjust(hspace=0.0)
    axes[0, 0].imshow(np.arange(12.0).reshape(3, 4))  # no colour bar, no labels
    axes[0, 1].plot([0, 1, 2], [1, 3, 2])
    axes[0, 1].set(xlabel="epoch", ylabel="loss")  # the default locator puts ticks at 0.5, 1.5
    axes[1, 0].set(xlabel="x", ylabel="y", title="a title that runs into the panel above")
    axes[1, 0].plot([], [])  # a panel with nothing to see
    axes[1, 1].set_title("another one, just as low")
    axes[1, 1].plot([0, 1], [0, 1])
    found = "\n".join(figcheck.problems(fig, "bad"))
    assert "panel 0 '': AxesImage without a labelled colour bar" in found
    assert "panel 0 '': no x label" in found and "panel 0 '': no y label" in found
    assert "epoch ticks that are not whole epochs: ['0.5', '1.5']" in found
    assert "'a title that runs into the panel above': blank" in found
    assert "the title 'a title that runs into the panel above' overlaps" in found
    assert "'another one, just as low': no x label" in found


def test_the_style_helpers_make_a_figure_the_checks_pass():
    fig, axes = style.new_figure(2, 2, figsize=(6, 5))
    style.heatmap(axes[0, 0], np.arange(12.0).reshape(3, 4), "value")
    axes[0, 0].set(xlabel="column", ylabel="row")
    axes[0, 1].plot([0, 1, 2], [1, 3, 2])
    style.integer_axis(axes[0, 1])
    axes[0, 1].set_ylabel("loss")
    for ax in axes[1]:  # one scale for two panels: one bar, drawn with the last
        style.heatmap(ax, np.eye(3), "CKA", bar=list(axes[1]) if ax is axes[1, 1] else False, vmin=0, vmax=1)
        ax.set(xlabel="epoch", ylabel="epoch", title="a title of some length")
    assert figcheck.problems(fig, "good") == []
    lo, hi = axes[0, 1].get_xlim()
    assert [t for t in axes[0, 1].get_xticks() if lo <= t <= hi] == [0, 1, 2]
    assert axes[1, 0].images[0].colorbar is None and axes[1, 1].images[0].colorbar.ax.get_ylabel() == "CKA"


def test_analyze_params_figures_name_the_metric_and_read_well(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(style, "save", figcheck.recording(drawn))
    rng = np.random.default_rng(0)
    params = {"Dense_0": {"kernel": rng.normal(size=(5, 6, 4)), "bias": rng.normal(size=(5, 4))}}
    d = np.abs(rng.normal(size=(5, 5)))
    d = d + d.T
    np.fill_diagonal(d, 0)
    d[3, 4] = d[4, 3] = 1e6  # one pair far apart
    dists = {"Dense_0/kernel": d, "Dense_0": d, "__all__": d}
    paths = params_figures.write_figures(params, tmp_path, dists=dists, metric="wasserstein")
    assert [p.name for p in paths] == ["histograms.png", "distances.png"] and set(drawn) == {"histograms", "distances"}
    for name, fig in drawn.items():
        assert figcheck.problems(fig, name) == []
    for p in paths:
        assert figcheck.png_problems(p) == []
    dist = drawn["distances"]
    titles = [a.get_title() for a in dist.axes if a.get_title()]
    assert titles == [
        "wasserstein distance: Dense_0/kernel",
        "wasserstein distance: Dense_0",
        "wasserstein distance: whole network",
    ]
    bars = [a._colorbar for a in dist.axes if getattr(a, "_colorbar", None)]
    assert {b.ax.get_ylabel() for b in bars} == {"wasserstein distance"}
    # the colour scale tops out at the 90th percentile of the 20 off-diagonal distances, not at 1e6
    top = np.sort(d[~np.eye(5, dtype=bool)])
    want = top[17] + 0.1 * (top[18] - top[17])  # numpy's linear percentile: position 0.9 * 19 = 17.1
    assert top[18] == 1e6 and want < 2e5 and [b.norm.vmax for b in bars] == pytest.approx([want] * 3)
    assert "wasserstein" in dist._suptitle.get_text()
    # five networks: each named in the histograms' legend
    legend = drawn["histograms"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"network {i}" for i in range(5)]


def test_analyze_params_histograms_of_many_networks_colour_them_on_a_bar(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(style, "save", figcheck.recording(drawn))
    params = {"Dense_0": {"kernel": np.random.default_rng(1).normal(size=(12, 6, 4))}}
    params_figures.write_figures(params, tmp_path)
    fig = drawn["histograms"]
    assert figcheck.problems(fig, "histograms") == []
    assert fig.axes[0].get_legend() is None
    (bar,) = [a for a in fig.axes if getattr(a, "_colorbar", None)]
    assert bar.get_ylabel() == "network (row of networks.csv)"


def test_depth_profile_reads_well(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(style, "save", figcheck.recording(drawn))
    table = pd.DataFrame({"zoo": ["a", "a", "b", "b"], "depth": [0.0, 1.0, 0.0, 1.0], "ratio": [1.2, 0.9, 1.1, 1.4]})
    png = figures.depth_profile(tmp_path, table)
    assert figcheck.problems(drawn["depth_profile"], "depth_profile") == [] and figcheck.png_problems(png) == []
