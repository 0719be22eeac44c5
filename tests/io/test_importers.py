"""`jaxweights analyze-params` and `importers`: weights trained elsewhere, read in every format."""

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from jaxweights import cli
from jaxweights.io import importers, rundir
from jaxweights.models import paths
from jaxweights.weights import compute, strength
from tests.zoo import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A tiny zoo of 4 MLPs (784-16-10) trained 2 epochs on a real MNIST slice."""
    tmp = tmp_path_factory.mktemp("zoo")
    assert train(tmp, data_dir, "--config.num_epochs=2", "--config.learning_rates=(0.05,0.2)") == 0
    return tmp / "run"


def _torch_state_dict(params, i):
    """Network i of a stacked Flax MLP as a PyTorch state dict: fc{k}.weight (out, in), fc{k}.bias."""
    return {
        f"fc{k + 1}.{name}": np.ascontiguousarray(
            params[f"Dense_{k}"][leaf][i].T if leaf == "kernel" else params[f"Dense_{k}"][leaf][i]
        )
        for k in range(2)
        for name, leaf in (("weight", "kernel"), ("bias", "bias"))
    }


def test_pytorch_safetensors_statistics_equal_numpy(trained, tmp_path, capsys):
    params = rundir.load_params(trained / "params.npz")
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"net{i}.safetensors")
        save_file(_torch_state_dict(params, i), str(paths[-1]))
    out = tmp_path / "out"
    assert cli.main(["analyze-params", *map(str, paths), "--out", str(out), "--metrics", "wasserstein"]) == 0
    assert "analysed 4 networks from 4 files" in capsys.readouterr().out
    df = pd.read_csv(out / "stats.csv")
    st = df[~df.undefined].set_index(["network", "layer", "statistic"]).value
    for i in range(4):
        sd = _torch_state_dict(params, i)
        for k in (1, 2):
            w, b = sd[f"fc{k}.weight"], sd[f"fc{k}.bias"]
            for layer, x in ((f"fc{k}/kernel", w), (f"fc{k}/bias", b), (f"fc{k}", np.concatenate([b, w.ravel()]))):
                x = x.astype(np.float64).ravel()
                ref = {
                    "mean": x.mean(),
                    "std": x.std(),
                    "l2": np.sqrt((x * x).sum()),
                    "max_abs": np.abs(x).max(),
                    "q25": np.quantile(x, 0.25),
                    "q50": np.median(x),
                    "q99": np.quantile(x, 0.99),
                }
                for name, value in ref.items():
                    np.testing.assert_allclose(
                        st[(i, layer, name)], value, rtol=2e-5, atol=1e-7, err_msg=f"net {i} {layer} {name}"
                    )
            # The kernel leaf is (in, out): its spectral norm is the one of the PyTorch weight.
            np.testing.assert_allclose(
                st[(i, f"fc{k}/kernel", "spectral_norm")], np.linalg.norm(w.astype(np.float64), 2), rtol=1e-3
            )
        # Node strength in PyTorch terms: input j sends fc1.weight[:, j]; hidden h gets fc1.weight[h] + b1[h]
        # and sends fc2.weight[:, h]; output o gets fc2.weight[o] + b2[o].
        with np.load(out / "node_strength.npz") as ns:
            w1, b1, w2, b2 = (sd[k].astype(np.float64) for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
            np.testing.assert_allclose(ns["input"][i], w1.sum(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ns["fc1"][i], w1.sum(1) + b1 + w2.sum(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ns["fc2"][i], w2.sum(1) + b2, rtol=1e-4, atol=1e-5)
    assert pd.read_csv(out / "networks.csv").source.tolist() == [str(p) for p in paths]
    assert (out / "figures" / "histograms.png").stat().st_size > 0
    assert (out / "figures" / "distances.png").stat().st_size > 0


def test_train_checkpoint_through_analyze_params_equals_analyze(trained, tmp_path):
    assert cli.main(["analyze", "--workdir", str(trained), "--metrics", "wasserstein,ks", "--nodynamics"]) == 0
    out = tmp_path / "imported"
    ckpt = trained / "checkpoints" / "2"
    assert cli.main(["analyze-params", str(ckpt), "--out", str(out), "--metrics", "wasserstein,ks", "--nofigures"]) == 0
    a = pd.read_csv(trained / "analysis" / "stats.csv")
    b = pd.read_csv(out / "stats.csv")
    pd.testing.assert_frame_equal(a, b)
    for name in ("node_strength.npz", "distances/wasserstein.npz", "distances/ks.npz"):
        with np.load(trained / "analysis" / name) as za, np.load(out / name) as zb:
            assert za.files == zb.files
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k])
    # Both paths run the same `analyze_params`; what it wrote must also match an independent
    # reference: numpy float64 statistics and scipy's distances between the saved networks.
    from scipy import stats as sps

    with np.load(trained / "params.npz") as z:
        w = z["Dense_0/kernel"].astype(np.float64).reshape(4, -1)
    st = b[(b.layer == "Dense_0/kernel") & ~b.undefined].set_index(["network", "statistic"]).value
    for i in range(4):
        np.testing.assert_allclose(st[(i, "mean")], w[i].mean(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(st[(i, "std")], w[i].std(), rtol=1e-4)
        np.testing.assert_allclose(st[(i, "l2")], np.linalg.norm(w[i]), rtol=1e-4)
    with np.load(out / "distances" / "wasserstein.npz") as zw, np.load(out / "distances" / "ks.npz") as zk:
        for i, j in ((0, 1), (0, 3), (2, 3)):
            np.testing.assert_allclose(
                zw["Dense_0/kernel"][i, j], sps.wasserstein_distance(w[i], w[j]), rtol=1e-3, atol=1e-7
            )
            np.testing.assert_allclose(zk["Dense_0/kernel"][i, j], sps.ks_2samp(w[i], w[j]).statistic, atol=1e-6)
    # The checkpoints folder and the run directory read as their latest checkpoint.
    for p in (trained / "checkpoints", trained):
        np.testing.assert_array_equal(
            importers.load(p)["Dense_0"]["kernel"], rundir.load_params(trained / "params.npz")["Dense_0"]["kernel"]
        )


def test_mismatched_structures_name_the_first_mismatching_leaf(trained, tmp_path, capsys):
    params = paths.flatten(rundir.load_params(trained / "params.npz"))
    np.savez(tmp_path / "a.npz", **{k: v[0] for k, v in params.items()})
    narrow = {k: v[0] for k, v in params.items()}
    narrow["Dense_0/kernel"], narrow["Dense_0/bias"] = narrow["Dense_0/kernel"][:, :8], narrow["Dense_0/bias"][:8]
    narrow["Dense_1/kernel"] = narrow["Dense_1/kernel"][:8]
    np.savez(tmp_path / "b.npz", **narrow)
    assert (
        cli.main(["analyze-params", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    # the first mismatching leaf in the files' stored (execution) order: the kernel, then its bias
    assert "b.npz" in err and "'Dense_0/kernel' has shape (784, 8)" in err and "has (784, 16)" in err
    missing = {k: v[0] for k, v in params.items() if k != "Dense_1/bias"}
    np.savez(tmp_path / "c.npz", **missing)
    with pytest.raises(importers.ParamsError, match=r"c\.npz: .*leaf 'Dense_1/bias' is missing"):
        importers.load([tmp_path / "a.npz", tmp_path / "c.npz"])
    assert cli.main(["analyze-params", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.safetensors: no such file" in capsys.readouterr().err
    (tmp_path / "w.txt").write_text("x")
    assert cli.main(["analyze-params", str(tmp_path / "w.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown format '.txt'" in capsys.readouterr().err
    assert cli.main(["analyze-params", "--out", str(tmp_path / "o")]) == 2
    assert "PATH" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["analyze-params", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "empty: not an orbax checkpoint directory" in capsys.readouterr().err


def test_msgpack_npz_and_orbax_round_trips(trained, tmp_path):
    import orbax.checkpoint as ocp
    from flax import serialization

    params = rundir.load_params(trained / "params.npz")
    nets = [{k: {l: np.asarray(v[i]) for l, v in d.items()} for k, d in params.items()} for i in range(4)]
    msg, npz = [], []
    for i, net in enumerate(nets):
        msg.append(tmp_path / f"n{i}.msgpack")
        # A whole Flax state: only its params are read.
        msg[-1].write_bytes(serialization.to_bytes({"params": net, "step": np.int32(7)}))
        npz.append(tmp_path / f"n{i}.npz")
        np.savez(npz[-1], **paths.flatten(net))
    ck = ocp.StandardCheckpointer()
    ck.save((tmp_path / "orbax1").absolute(), {"params": nets[1]})
    ck.wait_until_finished()
    flat = paths.flatten(params)
    for loaded in (
        importers.load(msg),
        importers.load(npz),
        importers.load([trained / "params.npz"]),  # stacked, detected from the biases
        importers.load([npz[0], tmp_path / "orbax1", msg[2], msg[3]]),
    ):  # formats mix
        got = paths.flatten(loaded)
        assert got.keys() == flat.keys()
        for k in flat:
            assert got[k].dtype == np.float32
            np.testing.assert_array_equal(got[k], flat[k], err_msg=k)
    # A stacked file next to single networks: 4 + 2 networks.
    assert importers.load([trained / "params.npz", npz[0], npz[1]])["Dense_1"]["bias"].shape == (6, 10)
    # stacked=False reads a stacked file as one network (every leaf keeps its leading axis).
    assert importers.load(trained / "params.npz", stacked=False)["Dense_0"]["kernel"].shape == (1, 4, 784, 16)


def test_torch_conv_layout_and_flatten_order(tmp_path):
    """A PyTorch conv -> Linear state dict: kernels become (kh, kw, in, out) and node strength of
    the conv channels follows PyTorch's (C, H, W) flatten."""
    rng = np.random.default_rng(0)
    c, h, w = 4, 3, 5
    sd = {
        "features.0.weight": rng.normal(size=(c, 1, 3, 3)).astype(np.float32),
        "features.0.bias": rng.normal(size=c).astype(np.float32),
        "features.1.weight": rng.normal(size=c).astype(np.float32),  # a norm scale
        "features.1.running_mean": np.zeros(c, np.float32),
        "features.1.num_batches_tracked": np.array(3, np.int64),
        "head.weight": rng.normal(size=(10, c * h * w)).astype(np.float32),
        "head.bias": rng.normal(size=10).astype(np.float32),
    }
    save_file(sd, str(tmp_path / "cnn.safetensors"))
    flat = importers.read(tmp_path / "cnn.safetensors", layers=["features/0", "head"])
    assert sorted(flat) == ["features/0/bias", "features/0/kernel", "features/1/scale", "head/bias", "head/kernel"]
    np.testing.assert_array_equal(flat["features/0/kernel"][0], sd["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["features/1/scale"][0], sd["features.1.weight"])
    # Rows of the head kernel are now channel-last: row p*C + ch holds PyTorch's column ch*H*W + p.
    hk = flat["head/kernel"][0]
    for ch in range(c):
        for p in range(h * w):
            np.testing.assert_array_equal(hk[p * c + ch], sd["head.weight"][:, ch * h * w + p])
    params = paths.unflatten(flat)
    ns = strength.node_strength(params, layers=["features/0", "head"])
    wc, bc, wh = (sd[k].astype(np.float64) for k in ("features.0.weight", "features.0.bias", "head.weight"))
    ref = [wc[ch].sum() + bc[ch] + wh[:, ch * h * w : (ch + 1) * h * w].sum() for ch in range(c)]
    np.testing.assert_allclose(ns["features/0"][0], ref, rtol=1e-4)
    np.testing.assert_allclose(ns["input"][0], [wc.sum()], rtol=1e-5)
    # Statistics are layout-free: the same numbers as numpy on the PyTorch arrays.
    df = compute.compute_statistics(params, statistics=["mean", "std"]).set_index(["layer", "statistic"]).value
    np.testing.assert_allclose(df[("head/kernel", "std")], sd["head.weight"].astype(np.float64).std(), rtol=1e-5)
    # --layout flax keeps PyTorch's (out, in) order (renamed to kernel, not transposed).
    kept = importers.read(tmp_path / "cnn.safetensors", layout="flax")
    np.testing.assert_array_equal(kept["head/kernel"][0], sd["head.weight"])


def test_layout_detection_and_half_precision(tmp_path):
    import ml_dtypes

    assert importers.detect_layout(["fc1.weight", "fc1.bias"]) == "torch"
    assert importers.detect_layout(["Dense_0/kernel", "Dense_0/bias"]) == "flax"
    with pytest.raises(importers.ParamsError, match="both 'weight' and 'kernel'"):
        importers.detect_layout(["a.weight", "b/kernel"])
    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 8
    save_file(
        {"fc.weight": w.astype(ml_dtypes.bfloat16), "fc.bias": np.ones(2, np.float16)}, str(tmp_path / "h.safetensors")
    )
    flat = importers.read(tmp_path / "h.safetensors")
    assert flat["fc/kernel"].dtype == np.float32 and flat["fc/bias"].dtype == np.float32
    np.testing.assert_array_equal(flat["fc/kernel"][0], w.T)  # exact in bfloat16
    with pytest.raises(importers.ParamsError, match="unknown layout 'keras'"):
        importers.read(tmp_path / "h.safetensors", layout="keras")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(importers.ParamsError, match=r"bad\.safetensors: cannot read as safetensors"):
        importers.read(tmp_path / "bad.safetensors")
