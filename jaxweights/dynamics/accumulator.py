"""Streams blocks of networks through the representation analyses (CKA, probes, modularity).

Memory holds one block's activations at a time; network × network CKA, which needs every network's
final-epoch representation, is assembled from CKA factors kept in temporary files.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxweights.dynamics.activations import capture, capture_zoo
from jaxweights.dynamics.cka import HIGHEST, cka_forms, cka_matrix, gram, minibatch_grams, normalise_hsic
from jaxweights.dynamics.common import INPUT, DynamicsError, default_chunk, network_masks
from jaxweights.dynamics.communities import NO_SIGNAL, NON_FINITE, REASONS, knn_modularity, representation_status
from jaxweights.dynamics.probes import choose_triples, plane_points, probe_predict, train_probe
from jaxweights.models import paths

log = logging.getLogger("jaxweights")


class RepresentationDynamics:
    """Streams networks through the representation analyses; `finish()` assembles the results.

    `add(snapshots)` takes per-epoch flat parameters of any number of networks (appended after
    those already added) and processes them in blocks of `block_size(...)` networks, so memory
    holds one block's activations at a time. Network × network CKA needs every network's
    final-epoch representation: its CKA factors (`cka_forms`, a centred Gram matrix of the probe
    set per layer) are written to a temporary folder and multiplied block by block in `finish()`.
    Use as a context manager (the temporary folder is removed on exit).

    Quantities: linear CKA (Kornblith et al. 2019) and minibatch CKA (Nguyen et al. 2021) layer ×
    layer, epoch × epoch (Sharon & Dar 2024, arXiv 2405.17377) and network × network; k-NN graph
    modularity (Lu et al. 2022); linear probes and their decision-region agreement (Sharon & Dar 2024).

    Args:
      setup: the run's `train.Setup` (its `model` and `num_classes` are used).
      epochs: the epochs of the snapshots that will be added.
      x_probe, y_probe: the standardised probe set and labels; x_eval, y_eval: held-out images.
      k, cka_batch, probe_steps, num_planes, resolution, chunk, memory_mb: as `representation_dynamics`.
      seed: of the decision-region triples' draw.
    """

    def __init__(
        self,
        setup,
        epochs,
        x_probe,
        y_probe,
        x_eval,
        y_eval,
        *,
        k: int = 3,
        cka_batch: int = 100,
        probe_steps: int = 300,
        num_planes: int = 4,
        resolution: int = 16,
        chunk: int | None = None,
        memory_mb: int = 1024,
        seed: int = 0,
    ):
        self.model, self.c = setup.model, setup.num_classes
        self.epochs = list(epochs)
        self.chunk = chunk or default_chunk()
        self.memory = int(memory_mb) << 20
        labels = np.asarray(y_probe)
        xp_np = np.asarray(x_probe)
        planes = jnp.concatenate(
            [
                plane_points(*(jnp.asarray(xp_np[i]) for i in t), resolution=resolution)
                for t in choose_triples(labels, num_planes, seed, self.c)
            ]
        )
        self.batch = jnp.concatenate([x_probe, x_eval, planes])
        self.n, self.ne = n, ne = x_probe.shape[0], x_eval.shape[0]
        self.bs = bs = n // max(n // cka_batch, 1)
        c, chunk = self.c, self.chunk

        def per_network(r_E):  # one network, one layer, all epochs: (E, n_total, f)
            x = r_E[:, :n]
            lin = cka_matrix(jax.vmap(gram)(x))
            unb = cka_matrix(jax.vmap(lambda a: minibatch_grams(a, bs))(x), True)
            mod = jax.vmap(lambda a: knn_modularity(a, y_probe, c, k))(x)
            return lin, unb, mod, jax.vmap(representation_status)(x)

        def probe_one(r):  # one network, one layer, one epoch: (n_total, f)
            probe = train_probe(r[:n], y_probe, c, probe_steps)
            ok = jnp.isfinite(r).all()  # NaN/inf activations: NaN readings, not argmax-of-NaN accuracies
            nan_if_bad = lambda a: jnp.where(ok, a, jnp.nan)
            return (
                nan_if_bad((probe_predict(probe, r[:n]) == y_probe).mean()),
                nan_if_bad((probe_predict(probe, r[n : n + ne]) == y_eval).mean()),
                jnp.where(ok, probe_predict(probe, r[n + ne :]), -1),
            )

        def layers_one(xs):  # one network's final representations of every layer
            out = []
            for unbiased in (False, True):
                lr = [cka_forms(x[:n], unbiased, bs) for x in xs]
                left, right = jnp.stack([a for a, _ in lr]), jnp.stack([b for _, b in lr])
                out.append(normalise_hsic(jnp.matmul(left, right.T, precision=HIGHEST)))
            return tuple(out)

        self._dyn = jax.jit(lambda r: jax.lax.map(per_network, r, batch_size=chunk))
        self._probe = jax.jit(lambda r: jax.lax.map(probe_one, r, batch_size=chunk))
        self._forms = jax.jit(
            lambda x, unbiased: jax.lax.map(lambda a: cka_forms(a, unbiased, bs), x, batch_size=chunk),
            static_argnums=1,
        )
        self._layers = jax.jit(lambda xs: jax.lax.map(layers_one, xs, batch_size=chunk))
        self._tmp = tempfile.TemporaryDirectory(prefix="jaxweights-cka-")
        self.names: list[str] | None = None
        self.parts: list[dict[str, np.ndarray]] = []  # per block: per-network results
        self.form_files: list[tuple[int, dict]] = []  # per block: (networks, {(layer, unbiased): (left, right)})
        self.num_networks = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()

    def block_size(self, snapshots) -> int:
        """Networks per block: the captured activations of all layers and epochs within `memory_mb`."""
        one = paths.unflatten({p: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for p, v in snapshots[0].items()})
        shapes = jax.eval_shape(lambda p: capture(self.model, p, self.batch), one)
        per_net = sum(int(np.prod(s.shape)) * 4 for s in shapes.values()) * len(snapshots) * 2  # + one stacked copy
        if per_net > self.memory:
            log.warning(
                "representations: one network's activations (all layers, %d snapshots, %d images) take "
                "%.0f MiB, more than memory_mb=%d; processing one network at a time",
                len(snapshots),
                self.batch.shape[0],
                per_net / 2**20,
                self.memory >> 20,
            )
        return max(1, min(self.memory // per_net, next(iter(snapshots[0].values())).shape[0]))

    def add(self, snapshots: Sequence[Mapping[str, Any]]) -> None:
        """Processes the networks of `snapshots` (per-epoch flat parameters, networks axis first)."""
        if len(snapshots) != len(self.epochs):
            raise DynamicsError(f"{len(snapshots)} snapshots for {len(self.epochs)} epochs")
        total = next(iter(snapshots[0].values())).shape[0]
        b = self.block_size(snapshots)
        if b < total:
            log.info("representations: %d networks in blocks of %d (memory_mb=%d)", total, b, self.memory >> 20)
        for s in range(0, total, b):
            self._add_block([{p: v[s : s + b] for p, v in snap.items()} for snap in snapshots])

    def _add_block(self, snapshots) -> None:
        n, ne = self.n, self.ne
        reps_e = [capture_zoo(self.model, params, self.batch, self.chunk) for params in snapshots]
        names = list(reps_e[0])
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise DynamicsError(f"layers {names} differ from the earlier networks' {self.names}")
        L, E = len(names), len(snapshots)
        N = reps_e[0][names[0]].shape[0]
        mod, probe_acc, probe_train = (np.zeros((N, E, L)) for _ in range(3))
        status = np.zeros((N, E, L), np.int32)
        preds = np.zeros((N, L, E, self.batch.shape[0] - n - ne), np.int32)
        lin_epochs, unb_epochs = np.zeros((N, L, E, E)), np.zeros((N, L, E, E))
        files = {}
        for li, name in enumerate(names):
            r = jnp.stack([reps_e[e][name] for e in range(E)], 1)  # (N, E, n_total, f)
            lin, unb, m, st = self._dyn(r)
            lin_epochs[:, li], unb_epochs[:, li], mod[:, :, li] = np.asarray(lin), np.asarray(unb), np.asarray(m)
            status[:, :, li] = np.asarray(st)
            for unbiased in (False, True):
                left, right = self._forms(r[:, -1, :n], unbiased)
                stem = Path(self._tmp.name) / f"{len(self.form_files)}_{li}_{int(unbiased)}"
                np.save(f"{stem}_l.npy", np.asarray(left))
                if unbiased:
                    np.save(f"{stem}_r.npy", np.asarray(right))
                files[li, unbiased] = (f"{stem}_l.npy", f"{stem}_r.npy" if unbiased else f"{stem}_l.npy")
            if name != INPUT:
                tr, te, pr = self._probe(r.reshape(N * E, *r.shape[2:]))
                probe_train[:, :, li] = np.asarray(tr).reshape(N, E)
                probe_acc[:, :, li] = np.asarray(te).reshape(N, E)
                preds[:, li] = np.asarray(pr).reshape(N, E, -1)
            del r
        lin_layers, unb_layers = (np.asarray(a) for a in self._layers([reps_e[-1][name] for name in names]))
        regions = (preds[:, :, :, None, :] == preds[:, :, None, :, :]).mean(-1)  # (N, L, E, E)
        bad = (preds < 0).any(-1)  # (N, L, E): a probe of non-finite activations
        regions[bad[:, :, :, None] | bad[:, :, None, :]] = np.nan
        self.parts.append(
            dict(
                mod=mod,
                status=status,
                probe_acc=probe_acc,
                probe_train=probe_train,
                regions=regions,
                linear_epochs=lin_epochs,
                unbiased_epochs=unb_epochs,
                linear_layers=lin_layers,
                unbiased_layers=unb_layers,
            )
        )
        self.form_files.append((N, files))
        self.num_networks += N

    def _networks_cka(self, li: int, unbiased: bool) -> np.ndarray:
        """`(N, N)` CKA of layer `li` between all networks, from the factor files, block by block."""
        N = self.num_networks
        h = np.zeros((N, N))
        oi = 0
        for ni, fi in self.form_files:
            left = np.load(fi[li, unbiased][0], mmap_mode="r")
            oj = 0
            for nj, fj in self.form_files:
                right = np.load(fj[li, unbiased][1], mmap_mode="r")
                with np.errstate(invalid="ignore", over="ignore"):  # blown-up networks: NaN, as in JAX
                    h[oi : oi + ni, oj : oj + nj] = np.asarray(left, np.float64) @ np.asarray(right, np.float64).T
                oj += nj
            oi += ni
        d = np.diagonal(h)
        with np.errstate(divide="ignore", invalid="ignore"):  # a dead or blown-up layer: NaN, as in-JAX CKA
            return h / np.sqrt(np.outer(d, d))

    def finish(self, exclude_N: np.ndarray | None = None):
        """`(cka, modularity_df, probes_df, regions)` of every network added (see `representation_dynamics`).

        `{linear,unbiased}_networks` rows and columns of the networks in `exclude_N` are NaN, as are
        those of a network whose last-epoch representation is non-finite: a blown-up network gets
        no CKA value that looks real. Each entry is computed from its two networks alone (float64
        products), so the other networks' values are the same with or without them.
        """
        if not self.parts:
            raise DynamicsError("no networks were added")
        _, exclude_N = network_masks(self.num_networks, None, exclude_N)
        cat = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
        names, epochs = self.names, self.epochs
        N, L, E = self.num_networks, len(names), len(epochs)
        cka = {
            "layers": np.asarray(names),
            "epochs": np.asarray(epochs),
            "linear_layers": cat["linear_layers"],
            "unbiased_layers": cat["unbiased_layers"],
            "linear_epochs": cat["linear_epochs"],
            "unbiased_epochs": cat["unbiased_epochs"],
            "linear_networks": np.stack([self._networks_cka(li, False) for li in range(L)]),
            "unbiased_networks": np.stack([self._networks_cka(li, True) for li in range(L)]),
        }
        bad = exclude_N | (cat["status"][:, -1] == NON_FINITE).any(1)
        for key in ("linear_networks", "unbiased_networks"):
            cka[key][:, bad, :] = np.nan
            cka[key][:, :, bad] = np.nan
        regions = cat["regions"]
        grid = pd.MultiIndex.from_product([range(N), epochs, range(L)], names=["network", "epoch", "depth"]).to_frame(
            index=False
        )
        grid.insert(2, "layer", np.asarray(names)[grid.depth.to_numpy()])
        codes = cat["status"].reshape(-1)
        mod_df = grid.assign(modularity=cat["mod"].reshape(-1), reason=[REASONS[c] for c in codes])
        for code in (NO_SIGNAL, NON_FINITE):
            hit = mod_df[codes == code]
            if len(hit):
                log.warning(
                    "modularity NaN for %d of %d (network, epoch, layer) representations, %s; e.g. network "
                    "%d, epoch %d, layer %s",
                    len(hit),
                    len(mod_df),
                    REASONS[code],
                    hit.network.iloc[0],
                    hit.epoch.iloc[0],
                    hit.layer.iloc[0],
                )
        pr = grid.assign(probe_acc=cat["probe_acc"].reshape(-1), probe_train_acc=cat["probe_train"].reshape(-1))
        prev = np.full((N, E, L), np.nan)
        if E > 1:
            prev[:, 1:] = np.stack([regions[:, :, e, e - 1] for e in range(1, E)], 1)
        final = np.moveaxis(regions[:, :, :, -1], 1, 2)
        pr = pr.assign(region_agreement_prev=prev.reshape(-1), region_agreement_final=final.reshape(-1))
        pr = pr[pr.layer != INPUT].reset_index(drop=True)
        return cka, mod_df, pr, regions
