"""The dynamics of a whole run: representation analyses of every network, and the files `write_dynamics` writes.

Inputs are the per-epoch orbax snapshots of a run directory (`checkpoints/<epoch>/`, epoch 0 is the
initialisation; `keep_checkpoints=0` keeps them all) and a fixed probe set of test images. Quantities
(per network, layer and epoch): relative weight change (Agrawal et al. 2020, arXiv 2011.06735),
weight statistics over training, linear CKA (Kornblith et al. 2019) and minibatch CKA (Nguyen et al.
2021) layer × layer, epoch × epoch (Sharon & Dar 2024, arXiv 2405.17377) and network × network,
linear probes and their decision regions (Sharon & Dar 2024), and modularity over depth with
pruning candidates (Lu et al. 2022, ECCV).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxweights.dynamics.accumulator import RepresentationDynamics
from jaxweights.dynamics.common import DynamicsError, network_masks
from jaxweights.dynamics.communities import pruning_candidates
from jaxweights.dynamics.run_inputs import probe_data
from jaxweights.dynamics.rwc import relative_weight_change
from jaxweights.dynamics.snapshots import check_same_epochs, checkpoint_epochs, load_dir_snapshots, snapshot_dirs
from jaxweights.dynamics.summary import summarize
from jaxweights.dynamics.trajectories import statistics_over_epochs
from jaxweights.io import atomic, rundir


def representation_dynamics(
    setup,
    snapshots,
    epochs,
    x_probe,
    y_probe,
    x_eval,
    y_eval,
    *,
    exclude_N: np.ndarray | None = None,
    **options,
):
    """CKA, probes and modularity of every network, layer and snapshot.

    Networks are processed in blocks whose activations (all layers, all epochs) fit in
    `memory_mb`; only each network's results and the final-epoch CKA factors (kept in temporary
    files) outlive a block. See `RepresentationDynamics` to feed the networks in parts (the
    chunks of a chunked run).

    Args:
      setup: the run's `train.Setup` (its `model` and `num_classes` are used).
      snapshots: per-epoch flat parameters; epochs: their epochs.
      x_probe, y_probe: the standardised probe set (n images) and labels.
      x_eval, y_eval: held-out images for probe accuracy.
      exclude_N: boolean `(N,)`, networks left out (diverged, exploded, not learned, ...) whose network × network CKA rows and
        columns are NaN (see `RepresentationDynamics.finish`).
      **options: the options of `RepresentationDynamics` (k, cka_batch, probe_steps, num_planes,
        resolution, chunk, memory_mb, seed).

    Returns:
      `(cka, modularity_df, probes_df, regions)`: `cka` a dict of arrays (see `write_dynamics`),
      `modularity_df` rows `network, epoch, layer, depth, modularity`, `probes_df` rows
      `network, epoch, layer, depth, probe_acc, probe_train_acc, region_agreement_prev,
      region_agreement_final`, `regions` `(N, L, E, E)` decision-region agreement.
    """
    with RepresentationDynamics(setup, epochs, x_probe, y_probe, x_eval, y_eval, **options) as acc:
        acc.add(snapshots)
        return acc.finish(exclude_N)


def write_dynamics(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    optimal_N: np.ndarray | None = None,
    exclude_N: np.ndarray | None = None,
    optimal_rule: str | None = None,
    probe_size: int = 500,
    k: int = 3,
    cka_batch: int = 100,
    probe_steps: int = 300,
    num_planes: int = 4,
    resolution: int = 16,
    tol: float = 0.01,
    data_dir: str | None = None,
    figures: Callable[[Path, np.ndarray, np.ndarray], Any] | bool | None = None,
    chunk: int | None = None,
    memory_mb: int = 1024,
    model: Any = None,
    seed: int = 0,
) -> Path:
    """Computes the learning dynamics of a run directory and writes them into `out_dir`.

    Files written (a run with static groups is handled per group, in `out_dir/groups/<NN>/`):

        rwc.csv                network, layer, depth, epoch, rwc_l1_ratio, rwc_mean_elementwise, zero_weights
        stats_over_epochs.csv  epoch, network, layer, statistic, value, undefined
        modularity.csv         network, epoch, layer, depth, modularity, reason (why the modularity
                               is NaN: no signal or non-finite representation; empty when defined),
                               candidate (last epoch's pruning candidates per network)
        pruning.json           {"layers": zoo-level candidates, "curve": mean final modularity per
                               layer of the optimal networks, "networks": their indices}
        cka.npz                layers, epochs, {linear,unbiased}_layers (N, L, L) at the last
                               epoch, {linear,unbiased}_epochs (N, L, E, E), {linear,unbiased}_networks (L, N, N)
        probes.csv             network, epoch, layer, depth, probe_acc, probe_train_acc,
                               region_agreement_prev, region_agreement_final
        probe_regions.npz      agreement (N, L, E, E) of the probes' decision regions
        figures/*.png + *.csv  (with `figures=True`)

    Args:
      run_dir: a run directory of `jaxweights train` (per-epoch checkpoints kept).
      out_dir: where to write.
      optimal_N: boolean `(N,)`, the optimal networks, as the caller defines them (`jaxweights.groups`);
        the summaries (`dynamics.json`, pruning curve, figures) are over them. None: every network
        not excluded.
      exclude_N: boolean `(N,)`, the networks the study leaves out (diverged, exploded, not learned,
        below `--min_accuracy`: `analysis.network_groups`); they are in no across-network summary
        or figure and get NaN network × network CKA. None: none. Their own per-network rows
        stay in the tables.
      optimal_rule: words for the rule behind `optimal_N`, shown in the report.
      probe_size: probe images, a seeded class-stratified draw from the test split; a second draw
        from the other test images is held out for probe accuracy (`probe_data`).
      k: neighbours of the modularity graph (Lu et al. use 3).
      cka_batch: minibatch size of the unbiased-HSIC CKA.
      probe_steps: Adam steps per linear probe.
      num_planes, resolution: decision-region planes through image triples, grid points per side.
      tol: modularity gain below which a hidden layer is a pruning candidate.
      data_dir: data folder (default: the run's config).
      figures: draws the figures once the tables are written: called as `figures(out_dir, optimal_N,
        exclude_N)` with the checked masks, e.g. `jaxweights.report.dynamics.write_figures` (the
        dynamics draw nothing themselves). None or False: no figures.
      chunk: networks vmapped at once (default `default_chunk()`: 1 on CPU, 64 on accelerators).
      memory_mb: memory for captured activations; networks are processed in blocks that fit.
      model: the Flax module of a run trained with your own module (see `probe_data`).
      seed: of the probe and held-out draws and the decision-region triples' draw.

    A zoo trained in chunks is read one chunk's snapshots at a time; its `stats_over_epochs.csv`
    `hist_*` rows then use each chunk's own bin edges.

    Returns:
      `out_dir` as a Path.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if figures is True:  # 0.1's boolean: still draws them, for one release
        warnings.warn(
            "write_dynamics(figures=True) is deprecated: pass figures=jaxweights.report.dynamics.write_figures",
            DeprecationWarning,
            stacklevel=2,
        )
        figures = importlib.import_module("jaxweights.report.dynamics").write_figures
    if not (run_dir / "config.json").exists():
        raise DynamicsError(f"{run_dir}: no config.json (is this a `jaxweights train` run directory?)")
    groups = (
        sorted(p for p in (run_dir / "groups").glob("*") if (p / "config.json").exists())
        if (run_dir / "groups").is_dir()
        else []
    )
    if groups and not (run_dir / "checkpoints").is_dir():
        if optimal_N is not None or exclude_N is not None:
            raise DynamicsError(
                f"{run_dir}: a run with static groups; pass optimal_N/exclude_N per group, "
                f"calling write_dynamics on {run_dir}/groups/NN"
            )
        for g in groups:
            write_dynamics(
                g,
                out_dir / "groups" / g.name,
                probe_size=probe_size,
                k=k,
                cka_batch=cka_batch,
                probe_steps=probe_steps,
                num_planes=num_planes,
                resolution=resolution,
                tol=tol,
                data_dir=data_dir,
                figures=figures,
                chunk=chunk,
                memory_mb=memory_mb,
                model=model,
                seed=seed,
            )
        return out_dir
    dirs = snapshot_dirs(run_dir)
    listed = [checkpoint_epochs(d) for d in dirs]  # a chunk that lost a snapshot fails before minutes of work
    for d, e in zip(dirs, listed):
        check_same_epochs(d, e, listed[0])
    given = optimal_N is not None
    if (given or exclude_N is not None) and (run_dir / "metrics.csv").exists():  # a wrong mask fails before minutes
        network_masks(len(rundir.last_epoch(pd.read_csv(run_dir / "metrics.csv"))), optimal_N, exclude_N)
    setup, xp, yp, xe, ye = probe_data(run_dir, probe_size, data_dir, model, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rwc_parts, stat_parts, epochs, offset = [], [], None, 0
    with contextlib.ExitStack() as stack:  # the CKA factor files go when this block ends
        for d in dirs:  # one chunk's snapshots in memory at a time
            e, snaps = load_dir_snapshots(d)
            if len(snaps) < 2:
                raise DynamicsError(
                    f"{d}: only {len(snaps)} checkpoint(s); learning dynamics need per-epoch "
                    "snapshots (train with checkpoint_every=1, keep_checkpoints=0)"
                )
            if epochs is None:
                epochs = e
                acc = stack.enter_context(
                    RepresentationDynamics(
                        setup,
                        epochs,
                        xp,
                        yp,
                        xe,
                        ye,
                        k=k,
                        cka_batch=cka_batch,
                        probe_steps=probe_steps,
                        num_planes=num_planes,
                        resolution=resolution,
                        chunk=chunk,
                        memory_mb=memory_mb,
                        seed=seed,
                    )
                )
            check_same_epochs(d, e, epochs)
            rwc_parts.append(relative_weight_change(snaps, epochs).assign(network=lambda t: t.network + offset))
            stat_parts.append(statistics_over_epochs(snaps, epochs).assign(network=lambda t: t.network + offset))
            acc.add(snaps)
            offset += next(iter(snaps[0].values())).shape[0]
            del snaps
        optimal_N, exclude_N = network_masks(acc.num_networks, optimal_N, exclude_N)
        cka, mod, probes, regions = acc.finish(exclude_N)
    atomic.write_csv(
        out_dir / "rwc.csv",
        pd.concat(rwc_parts).sort_values(["depth", "epoch", "network"], kind="stable").reset_index(drop=True),
    )
    atomic.write_csv(
        out_dir / "stats_over_epochs.csv",
        pd.concat(stat_parts).sort_values(["epoch", "network"], kind="stable").reset_index(drop=True),
    )
    layers = list(cka["layers"])
    last = mod[mod.epoch == epochs[-1]]
    curves = last.pivot(index="network", columns="depth", values="modularity").to_numpy()
    cand = {n: set(pruning_candidates(q, layers, tol)) for n, q in enumerate(curves)}
    mod["candidate"] = [(e == epochs[-1]) and (l in cand[n]) for n, e, l in zip(mod.network, mod.epoch, mod.layer)]
    atomic.write_csv(out_dir / "modularity.csv", mod)
    rule = optimal_rule or ("given by the caller" if given else "none given: every analysed network")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN layer (no signal anywhere): NaN, as it should
        mean_curve = np.nanmean(curves[optimal_N], 0) if optimal_N.any() else np.full(len(layers), np.nan)
    atomic.write_json(
        out_dir / "pruning.json",
        {
            "layers": pruning_candidates(mean_curve, layers, tol),
            "tol": tol,
            "depth_names": layers,
            "curve": [float(v) for v in mean_curve],
            "networks": np.flatnonzero(optimal_N).tolist(),
            "optimal_rule": rule,
        },
    )
    _write_npz(out_dir / "cka.npz", cka)
    _write_npz(
        out_dir / "probe_regions.npz",
        {"agreement": regions, "layers": np.asarray(layers), "epochs": np.asarray(epochs)},
    )
    atomic.write_csv(out_dir / "probes.csv", probes)
    atomic.write_json(
        out_dir / "dynamics.json",
        atomic.finite_json(
            summarize(
                pd.read_csv(out_dir / "rwc.csv"),
                mod,
                probes,
                cka,
                optimal_N,
                pruning_candidates(mean_curve, layers, tol),
                exclude_N=exclude_N,
                optimal_rule=rule,
            )
        ),
    )
    if callable(figures):
        figures(out_dir, optimal_N, exclude_N)
    return out_dir


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic.atomic_write_bytes(path, buf.getvalue())
