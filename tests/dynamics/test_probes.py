"""Linear probes and decision regions (Sharon & Dar 2024): scikit-learn and numpy references, seeded draws."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from jaxweights import config as config_lib
from jaxweights import dynamics
from jaxweights.io import atomic
from tests.conftest import DYNAMICS_OPTIONS


def _with_alarm(seconds, fn):
    """Runs fn; a hang (the old rejection loop of choose_triples) becomes a test failure."""
    import signal

    def boom(*_):
        raise TimeoutError(f"did not finish in {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_choose_triples_is_bounded_and_names_missing_classes():
    labels = np.repeat(np.arange(10), 20)  # grouped by class, as cifar10.npz's test split
    with pytest.raises(dynamics.DynamicsError):  # one class only: ends with an error, never hangs
        _with_alarm(20, lambda: dynamics.choose_triples(np.zeros(50, int), 2))
    t = _with_alarm(20, lambda: dynamics.choose_triples(labels, 50, seed=3, num_classes=10))
    assert t.shape == (50, 3) and all(len(set(labels[r].tolist())) == 3 for r in t)
    np.testing.assert_array_equal(t, dynamics.choose_triples(labels, 50, seed=3, num_classes=10))  # seeded
    for few in (np.zeros(50, int), np.repeat([0, 4], 25)):  # fewer than 3 classes: an error naming the others
        with pytest.raises(dynamics.DynamicsError, match=r"missing: \[.*1, 2, 3.*9\]"):
            _with_alarm(20, lambda: dynamics.choose_triples(few, 2, num_classes=10))


def test_probe_and_held_out_sets_are_stratified_on_class_grouped_cifar10(tmp_path, data_dir):
    """cifar10.npz's test split is stored grouped by class: the first images are all airplanes."""
    with np.load(data_dir / "cifar10.npz") as z:
        y_all, x_all = z["y_test"].reshape(-1).astype(int), z["x_test"]
    assert (y_all[:500] == y_all[0]).all()  # the trap the old front slices fell into
    c = config_lib.default_config()
    with c.unlocked():
        c.dataset, c.max_train, c.max_test, c.batch_size = "cifar10", 256, 400, 64
    atomic.write_json(tmp_path / "config.json", c.to_dict())
    setup, xp, yp, xe, ye = dynamics.probe_data(tmp_path, 200, str(data_dir))
    yp, ye = np.asarray(yp), np.asarray(ye)
    assert xp.shape[0] == 200 and xe.shape[0] == 200
    for y in (yp, ye):  # every class, in proportion (20 each, the split being balanced), not grouped
        np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 20))
        assert (np.diff(y) != 0).sum() > 100
    # the images are real test images with their own labels; probe and held-out sets are disjoint
    mean, std = np.asarray(setup.mean, np.float32), np.asarray(setup.std, np.float32)
    raw = lambda a: np.rint(np.asarray(a) * std + mean).astype(np.uint8)  # undo the standardisation
    key = {x.tobytes(): i for i, x in enumerate(x_all)}
    ip = [key[r.tobytes()] for r in raw(xp)]
    ie = [key[r.tobytes()] for r in raw(xe)]
    np.testing.assert_array_equal(y_all[ip], yp)
    np.testing.assert_array_equal(y_all[ie], ye)
    assert not set(ip) & set(ie)
    # seeded: the same draw again, another seed another draw
    assert np.array_equal(np.asarray(dynamics.probe_data(tmp_path, 200, str(data_dir), seed=0)[2]), yp)
    assert not np.array_equal(np.asarray(dynamics.probe_data(tmp_path, 200, str(data_dir), seed=2)[1]), xp)
    _with_alarm(20, lambda: dynamics.choose_triples(yp, 8, num_classes=10))


def test_plane_points_corners():
    a, b, c = (jnp.full((2, 2, 1), v, jnp.float32) for v in (0.0, 1.0, 3.0))
    pts = np.asarray(dynamics.plane_points(a, b, c, resolution=2, margin=0.0))
    np.testing.assert_allclose(pts[:, 0, 0, 0], [0.0, 3.0, 1.0, 4.0])  # a, c, b, b + c − a


def test_probes_equal_scikit_learn_and_region_agreement_equals_numpy(dynamics_zoo, data_dir):
    """probes.csv against references built outside the pipeline: held-out accuracy near scikit-learn's
    multinomial logistic regression on the same standardised features, for every layer of a trained
    network; decision-region agreement recomputed in numpy from each epoch's probe on the planes."""
    run, out = dynamics_zoo
    probes = pd.read_csv(out / "probes.csv")
    assert len(probes) == 4 * 3 * 3 and set(probes.layer) == {"Dense_0", "Dense_1", "Dense_2"}
    setup, xp, yp, xe, ye = dynamics.probe_data(run, 200, str(data_dir))
    epochs, snaps = dynamics.load_snapshots(run)
    yp_np, ye_np = np.asarray(yp), np.asarray(ye)
    tr = dynamics.capture_zoo(setup.model, snaps[-1], xp)
    te = dynamics.capture_zoo(setup.model, snaps[-1], xe)
    for layer in ("Dense_0", "Dense_1", "Dense_2"):
        a, b = np.asarray(tr[layer][0], np.float64), np.asarray(te[layer][0], np.float64)
        mu, sd = a.mean(0), a.std(0) + 1e-6
        sk = LogisticRegression(max_iter=2000).fit((a - mu) / sd, yp_np).score((b - mu) / sd, ye_np)
        row = probes.query("network == 0 and epoch == 2 and layer == @layer")
        assert abs(row.probe_acc.item() - sk) < 0.08, layer
        assert row.probe_acc.item() > 0.5  # lr 0.05: a trained network's layers are linearly readable
    # decision regions: the planes through the seeded triples, each epoch's probe of Dense_1, network 1
    o = DYNAMICS_OPTIONS
    triples = dynamics.choose_triples(yp_np, o["num_planes"], 0, 10)
    xp_np = np.asarray(xp)
    planes = jnp.concatenate(
        [dynamics.plane_points(*(jnp.asarray(xp_np[i]) for i in t), resolution=o["resolution"]) for t in triples]
    )
    preds = []
    for s in snaps:
        r_probe = dynamics.capture_zoo(setup.model, s, xp)["Dense_1"][1]
        r_plane = np.asarray(dynamics.capture_zoo(setup.model, s, planes)["Dense_1"][1], np.float64)
        w, b, mu, sd = (np.asarray(v, np.float64) for v in dynamics.train_probe(r_probe, yp, 10, o["probe_steps"]))
        preds.append((((r_plane - mu) / sd) @ w + b).argmax(1))
    rows = probes.query("network == 1 and layer == 'Dense_1'").sort_values("epoch")
    prev = [np.nan] + [(preds[e] == preds[e - 1]).mean() for e in range(1, 3)]
    final = [(preds[e] == preds[-1]).mean() for e in range(3)]
    np.testing.assert_allclose(rows.region_agreement_prev, prev, atol=0.02)  # a few grid points near a boundary
    np.testing.assert_allclose(rows.region_agreement_final, final, atol=0.02)
    assert rows.region_agreement_final.iloc[0] < 1.0  # the initial probe's regions differ from the final one's
