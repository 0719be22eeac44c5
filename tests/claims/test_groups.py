"""groups.py: network states, the optimal/suboptimal split (ties not broken by grid order) and
hyperparameter cells, on constructed cases whose answer is known."""

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxweights import config as jcfg
from jaxweights.claims import groups
from jaxweights.claims.groups import EXCLUDED, MIDDLE, OPTIMAL, SUBOPTIMAL


def test_states_precedence_and_chance():
    assert groups.chance_accuracy(10) == 0.1 and groups.chance_accuracy(4) == 0.25
    acc = np.array([0.9, 0.9, 0.9, 0.12, 0.16, np.nan, 0.05, 0.9, 0.28])
    div = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0], bool)
    exp = np.array([1, 1, 0, 0, 0, 0, 1, np.nan, 0])  # NaN: an older run without the flag
    params = {"Dense_0": {"kernel": np.ones((9, 2, 2), np.float32)}}
    params["Dense_0"]["kernel"][2, 0, 1] = np.inf
    got = groups.network_states(acc, diverged_N=div, exploded_N=exp, params=params, num_classes=10, chance_margin=0.05)
    #   flag beats all | exploded | inf weight | within margin | above | nan acc | all flags | ok | ok
    assert got.tolist() == ["diverged", "exploded", "diverged", "not_learned", "ok", "diverged", "diverged", "ok", "ok"]
    # 4 classes: chance is 0.25, so 0.3 did not learn; no flags at all -> only accuracy decides
    got4 = groups.network_states(acc, num_classes=4)
    assert got4.tolist() == [
        "ok",
        "ok",
        "ok",
        "not_learned",
        "not_learned",
        "diverged",
        "not_learned",
        "ok",
        "not_learned",
    ]
    assert set(got4) <= set(groups.STATES)


def test_ties_at_the_cut_are_not_broken_by_grid_order():
    # 8 networks tied at chance at the start of the grid (as a low learning rate row would be), 4 above.
    acc = np.r_[np.full(8, 0.1), [0.5, 0.6, 0.8, 0.9]]
    k = 3  # round(0.25 * 12)
    picked = np.zeros(12)
    for seed in range(400):
        lab = groups.split_groups(acc, quantile=0.25, seed=seed)
        assert (lab == SUBOPTIMAL).sum() == k and (lab == OPTIMAL).sum() == k
        assert (lab[9:] == OPTIMAL).all() and lab[8] == MIDDLE  # untied networks: no randomness
        picked += lab == SUBOPTIMAL
    freq = picked[:8] / 400
    # each tied network is suboptimal with probability 3/8 whatever its position (index-order ties
    # would give 1, 1, 1, 0, 0, 0, 0, 0)
    assert np.all(np.abs(freq - k / 8) < 0.1), freq
    # with one seed, permuting the networks leaves the group sizes and every untied label unchanged
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = rng.permutation(12)
        lab = groups.split_groups(acc[perm], quantile=0.25, seed=3)
        back = np.empty(12, int)
        back[perm] = lab
        assert (back[9:] == OPTIMAL).all() and back[8] == MIDDLE and (back[:8] == SUBOPTIMAL).sum() == k


def test_split_groups_threshold_exclusion_and_errors():
    acc = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.95, 0.3, np.nan])
    ex = groups.network_states(acc, diverged_N=[0, 0, 0, 0, 0, 0, 1, 0], chance_margin=0.0) != "ok"
    lab = groups.split_groups(acc, quantile=0.34, exclude=ex)
    assert lab.tolist() == [SUBOPTIMAL, OPTIMAL, MIDDLE, MIDDLE, SUBOPTIMAL, OPTIMAL, EXCLUDED, EXCLUDED]
    lab = groups.split_groups(acc, threshold=(0.4, 0.85), exclude=ex)
    assert lab.tolist() == [SUBOPTIMAL, OPTIMAL, MIDDLE, MIDDLE, SUBOPTIMAL, OPTIMAL, EXCLUDED, EXCLUDED]
    with pytest.raises(groups.ClaimError, match="threshold"):
        groups.split_groups(acc, threshold=0.93, exclude=ex)
    with pytest.raises(groups.ClaimError, match="quantile"):
        groups.split_groups(acc, quantile=0.7)


def test_cells_of_a_real_grid_table():
    spec = importlib.util.spec_from_file_location("qs", Path(__file__).parents[2] / "configs" / "quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = jcfg.hyperparameter_grid(mod.get_config())
    rng = np.random.default_rng(0)
    # a last-epoch metrics table of two static groups: the same dynamic grid twice
    last = pd.concat([grid.assign(group=g) for g in ("w32", "w64")], ignore_index=True)
    last["network"] = np.arange(len(last))
    last = last.assign(
        epoch=4,
        train_loss=rng.random(len(last)),
        test_acc=rng.random(len(last)),
        diverged=False,
        exploded=False,
        max_abs_weight=rng.random(len(last)),
    )
    cells = groups.hyperparameter_cells(last)
    hp = [c for c in grid.columns if c not in ("network", "seed")] + ["group"]
    key = [tuple(r) for r in last[hp].itertuples(index=False)]
    n_seeds = grid.seed.nunique()
    # the reference: same cell iff same hyperparameter tuple (pairwise, by hand)
    for i, j in itertools.combinations(range(len(last)), 2):
        assert (cells[i] == cells[j]) == (key[i] == key[j])
    assert len(np.unique(cells)) == len(last) // n_seeds
    assert np.all(np.bincount(cells) == n_seeds)
    # metrics and flags never split a cell; a table without hyperparameters is one cell
    assert (groups.hyperparameter_cells(last[["network", "seed", "test_acc"]]) == 0).all()


def test_half_split_of_an_odd_count_leaves_the_median_in_the_middle():
    # quantile 0.5 of 47 networks: 23 below the median, 23 above, the median network in neither group
    acc = np.random.default_rng(1).permutation(47) / 47
    labels = groups.split_groups(acc, quantile=0.5)
    median = np.argsort(acc)[23]
    assert labels[median] == MIDDLE
    assert (labels == OPTIMAL).sum() == (labels == SUBOPTIMAL).sum() == 23
    assert acc[labels == OPTIMAL].min() > acc[median] > acc[labels == SUBOPTIMAL].max()
    with pytest.raises(groups.ClaimError, match="at least 4"):
        groups.split_groups(acc[:3], quantile=0.5)
