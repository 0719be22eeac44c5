"""Scaling out: 8 devices == 1 device (training, statistics, distances), padding, chunks == no
chunks, two processes, bf16, the memory plan. Training results are compared bitwise: on CPU a
network's parameters and metrics do not depend on the devices, the chunks or the other networks.

Runs on several devices happen in subprocesses, because the simulated device count
(`XLA_FLAGS=--xla_force_host_platform_device_count`) must be set before JAX starts.
"""

import json
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import models, train
from jaxweights.io import checkpoints, rundir
from jaxweights.pipelines import params as params_pipeline
from jaxweights.pipelines import train as train_pipeline
from jaxweights.weights import compute, distances
from tests.zoo import (
    METRICS,
    N_NETS,
    OTHER_METRICS,
    STAT_METRICS,
    STATISTICS,
    finish,
    other_population,
    subprocess_on,
    tiny,
)


def _assert_same_networks(a: Path, b: Path, rows_b=None):
    """Networks of run `b` (its networks `rows_b`, all by default) have bitwise the parameters and
    metrics rows of the same networks of run `a`, matched by their hyperparameters."""
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    grid_a, grid_b = pd.read_csv(a / "hparams.csv"), pd.read_csv(b / "hparams.csv")
    keys = [c for c in grid_a.columns if c != "network"]
    rows_b = range(len(grid_b)) if rows_b is None else rows_b
    index_a = {tuple(r): i for i, r in enumerate(grid_a[keys].itertuples(index=False))}
    rows_a = [index_a[tuple(grid_b[keys].iloc[j])] for j in rows_b]
    assert len(set(rows_a)) == len(rows_a) > 0
    pa, pb = dict(np.load(a / "params.npz")), dict(np.load(b / "params.npz"))
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k][rows_a], pb[k][list(rows_b)], err_msg=k)
    for i, j in zip(rows_a, rows_b):
        ra = ma[ma.network == i].sort_values("epoch")
        rb = mb[mb.network == j].sort_values("epoch")
        assert len(ra) == len(rb) > 0
        for col in ("train_loss", "train_acc", "test_loss", "test_acc", "max_abs_weight", "diverged", "exploded"):
            np.testing.assert_array_equal(ra[col].to_numpy(), rb[col].to_numpy(), err_msg=f"{col} network {j}")


def _assert_same_run(a: Path, b: Path):
    """Two runs of the tiny zoo: the same networks, bitwise the same parameters and metrics."""
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert list(ma.columns) == list(mb.columns) and len(ma) == len(mb) == N_NETS * 2
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    pa = dict(np.load(a / "params.npz"))
    assert pa["Dense_0/kernel"].shape[0] == N_NETS  # padding never reaches the outputs
    _assert_same_networks(a, b)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, data_dir):
    """The reference: the tiny zoo trained in this process on its one CPU device."""
    assert jax.device_count() == 1, "run without XLA_FLAGS device-count overrides"
    out = tmp_path_factory.mktemp("one") / "run"
    train_pipeline.train_and_evaluate(tiny(data_dir), out, progress=False)
    return out


def test_eight_devices_equal_one_device_training_and_statistics(one_device, tmp_path, data_dir):
    out = finish(
        subprocess_on(
            f"""
        import json, os, jax, numpy as np
        from jaxweights import config as config_lib, data as data_lib, train
        from jaxweights.weights import compute
        from jaxweights.io import rundir
        from jaxweights.pipelines import train as train_pipeline, train_chunk
        train_pipeline.train_and_evaluate(tiny({str(data_dir)!r}), {str(tmp_path / 'run')!r}, progress=False)
        mesh = train.networks_mesh()
        params = rundir.load_params({str(tmp_path / 'run' / 'params.npz')!r})
        compute.compute_statistics(params, statistics=STATISTICS, per=("leaf", "layer", "network"), mesh=mesh).to_csv(
            {str(tmp_path / 'stats8.csv')!r}, index=False)
        from jaxweights.weights import distances
        d = {{f"{{m}}|{{k}}": v for m in METRICS + STAT_METRICS
              for k, v in distances.pairwise(params, m, mesh=mesh).items()}}
        other = other_population(params)
        for m in OTHER_METRICS:
            d.update({{f"other {{m}}|{{k}}": v for k, v in distances.pairwise(params, m, other=other, mesh=mesh).items()}})
        w, err = distances.pairwise(params, "wasserstein", sketch=64, with_error=True, mesh=mesh)
        d.update({{f"sketch wasserstein|{{k}}": v for k, v in w.items()}})
        d.update({{f"sketch wasserstein err|{{k}}": v for k, v in err.items()}})
        d.update({{f"sketch ks|{{k}}": v for k, v in distances.pairwise(params, "ks", sketch=64, mesh=mesh).items()}})
        np.savez({str(tmp_path / 'dist8.npz')!r}, **d)
        from jaxweights.pipelines import analyze
        analyze.analyze_workdir({str(tmp_path / 'run')!r}, metrics=["wasserstein", "ks", "euclidean"], report=False,
                                 dynamics=False)
        # the zoo's state really lives on 8 devices, 2 networks each (13 are padded to 16)
        c = tiny({str(data_dir)!r}, num_seeds=16)
        fns = train.make_zoo_fns(train.make_setup(c, data_lib.load_dataset(c)), (28, 28, 1), 500, mesh)
        grid = config_lib.hyperparameter_grid(c)
        hp = train.shard(train.Hyper(*(np.asarray(f) for f in train.hyper_from_grid(grid))), mesh)
        state = fns.init(hp)
        k = state.params["Dense_0"]["kernel"]
        # a checkpoint of 13 (uneven) goes through host memory, one of 8 stays sharded: no device
        # ever holds a replicated copy of the zoo
        uneven, even = train_chunk.unpad(state, 13, mesh), train_chunk.unpad(state, 8, mesh)
        # resumed after epoch 1 on 8 devices (13 networks restored, padded again to 16)
        import shutil
        shutil.copytree({str(tmp_path / 'run')!r}, {str(tmp_path / 'resumed')!r},
                        ignore=shutil.ignore_patterns("analysis"))
        shutil.rmtree({str(tmp_path / 'resumed' / 'checkpoints' / '2')!r})
        os.unlink({str(tmp_path / 'resumed' / 'params.npz')!r})
        import logging
        logging.basicConfig()
        logging.getLogger("jaxweights").setLevel(logging.INFO)
        train_pipeline.train_and_evaluate(tiny({str(data_dir)!r}), {str(tmp_path / 'resumed')!r}, progress=False)
        # shard_networks pads 13 rows to 16 with copies of the last, 2 rows per device
        x13 = np.arange(13 * 3, dtype=np.float32).reshape(13, 3)
        sn = train.shard_networks({{"a": x13}}, mesh)["a"]
        print(json.dumps({{"devices": jax.device_count(),
                           "padded": np.asarray(sn).tolist(),
                           "padded_shards": sorted(s.data.shape[0] for s in sn.addressable_shards),
                           "shards": sorted(s.data.shape[0] for s in k.addressable_shards),
                           "uneven": sorted({{type(x).__name__ for x in jax.tree.leaves(uneven)}}),
                           "even": sorted({{s.data.shape[0] for x in jax.tree.leaves(even)
                                           for s in x.addressable_shards}})}}))
    """,
            devices=8,
        )
    )
    info = json.loads(out.strip().splitlines()[-1])
    x13 = np.arange(13 * 3, dtype=np.float32).reshape(13, 3)
    np.testing.assert_array_equal(info.pop("padded"), np.concatenate([x13, np.repeat(x13[-1:], 3, 0)]))
    assert info == {"devices": 8, "shards": [2] * 8, "padded_shards": [2] * 8, "uneven": ["ndarray"], "even": [1]}
    _assert_same_run(one_device, tmp_path / "run")
    _assert_same_run(one_device, tmp_path / "resumed")
    assert "resuming after epoch 1" in out
    ckpt = checkpoints.Checkpoints(tmp_path / "run")
    assert ckpt.epochs() == [0, 1, 2]
    c = tiny(data_dir)
    setup = train.make_setup(c, data_lib.load_dataset(c))
    hp = train.hyper_from_grid(config_lib.hyperparameter_grid(c))
    like = jax.eval_shape(jax.vmap(lambda h: train.init_network(setup, h, (28, 28, 1))), hp)
    restored = ckpt.restore(2, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like))  # 13 networks, not 16
    final = np.load(tmp_path / "run" / "params.npz")["Dense_0/kernel"]
    np.testing.assert_array_equal(np.asarray(restored.params["Dense_0"]["kernel"]), final)
    # statistics sharded over 8 devices == the same statistics on one device
    params = rundir.load_params(tmp_path / "run" / "params.npz")
    ref_stats = compute.compute_statistics(params, statistics=STATISTICS, per=("leaf", "layer", "network"))
    got = pd.read_csv(tmp_path / "stats8.csv")
    assert list(got.layer) == list(ref_stats.layer) and list(got.statistic) == list(ref_stats.statistic)
    np.testing.assert_allclose(got.value, ref_stats.value, rtol=1e-5, atol=1e-7)
    # distances with their rows split over 8 devices == the one-device blocked computation
    with np.load(tmp_path / "dist8.npz") as z:
        got = dict(z)
    one_device_dist = {}
    for m in METRICS + STAT_METRICS:
        one_device_dist[m] = distances.pairwise(params, m)
        for k, ref in one_device_dist[m].items():
            np.testing.assert_allclose(got[f"{m}|{k}"], ref, rtol=1e-4, atol=1e-6, err_msg=f"{m} {k}")
    other = other_population(params)
    for m in OTHER_METRICS:  # a second population of another size: 13 × 5 matrices
        for k, ref in distances.pairwise(params, m, other=other).items():
            assert ref.shape == (N_NETS, 5)
            np.testing.assert_allclose(got[f"other {m}|{k}"], ref, rtol=1e-4, atol=1e-6, err_msg=f"other {m} {k}")
    # `analyze` on 8 devices (it shards by itself) == the one-device statistics and distances above
    a8 = pd.read_csv(tmp_path / "run" / "analysis" / "stats.csv").iloc[: len(ref_stats)]
    assert list(a8.layer) == list(ref_stats.layer) and list(a8.statistic) == list(ref_stats.statistic)
    np.testing.assert_allclose(a8.value, ref_stats.value, rtol=1e-5, atol=1e-7)
    for m in ("wasserstein", "ks", "euclidean"):
        with np.load(tmp_path / "run" / "analysis" / "distances" / f"{m}.npz") as z8:
            assert sorted(z8.files) == sorted(one_device_dist[m])
            for k in z8.files:
                np.testing.assert_allclose(
                    z8[k], one_device_dist[m][k], rtol=1e-4, atol=1e-6, err_msg=f"analyze {m} {k}"
                )
    w, err = distances.pairwise(params, "wasserstein", sketch=64, with_error=True)
    for k in w:
        np.testing.assert_allclose(got[f"sketch wasserstein|{k}"], w[k], rtol=1e-4, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(got[f"sketch wasserstein err|{k}"], err[k], rtol=1e-4, atol=1e-7, err_msg=k)
    exact = distances.pairwise(params, "ks")
    for k, ref in exact.items():  # sharded KS sketch: cell-end quantiles, within 1/q of the exact KS
        assert np.abs(got[f"sketch ks|{k}"] - ref).max() <= 1 / 64 + 1e-9, k


def test_chunked_run_equals_unchunked(one_device, tmp_path, data_dir, caplog):
    """Memory-plan chunks of 8 (13 = 8 + 5, the second chunk padded to 8): bitwise the unchunked run."""
    c = tiny(data_dir)
    setup = train.make_setup(c, data_lib.load_dataset(c))
    assert setup.vmap_chunk == 8  # the CPU default
    state_b, step_b = train.network_memory(setup, (28, 28, 1), 500)
    # room for 8 networks at a time (their state twice, the temporaries of 8), not for 16, beside
    # the data (512 + 500 images and labels, the test mask)
    data_b = 512 * 784 + 512 * 4 + 500 * 784 + 500 * 4 + 500 * 4
    c.memory_limit_mb = (data_b + 17 * state_b + 8 * step_b) / 2**20
    with caplog.at_level("INFO", logger="jaxweights"):
        train_pipeline.train_and_evaluate(c, tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / "chunks" / "plan.json").read_text())
    assert (plan["chunk_size"], plan["num_chunks"], plan["vmap_chunk"]) == (8, 2, 8)
    assert any("2 chunk(s) of 8 networks" in r.getMessage() for r in caplog.records)
    assert checkpoints.Checkpoints(tmp_path / "run" / "chunks" / "01").epochs() == [0, 1, 2]
    _assert_same_run(one_device, tmp_path / "run")
    # a resumed chunked run (last chunk lost) ends with the same files
    import shutil

    first = (tmp_path / "run" / "params.npz").read_bytes()
    shutil.rmtree(tmp_path / "run" / "chunks" / "01")
    (tmp_path / "run" / "params.npz").unlink()
    train_pipeline.train_and_evaluate(c, tmp_path / "run", progress=False)
    _assert_same_run(one_device, tmp_path / "run")
    assert (tmp_path / "run" / "params.npz").read_bytes() == first  # fixed zip dates: byte-identical
    # chunks of 3 cannot vmap 8 at a time: 3 are, with a warning (the last bits may then differ)
    c.memory_limit_mb, c.chunk_size = 0, 3
    caplog.clear()
    with caplog.at_level("INFO", logger="jaxweights"):
        df = train_pipeline.train_and_evaluate(c, tmp_path / "three", progress=False)
    plan = json.loads((tmp_path / "three" / "chunks" / "plan.json").read_text())
    assert (plan["chunk_size"], plan["num_chunks"], plan["vmap_chunk"]) == (3, 5, 3)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("3 networks vmapped at once, not vmap_chunk=8" in w for w in warned), warned
    np.testing.assert_allclose(df.test_loss, pd.read_csv(one_device / "metrics.csv").test_loss, rtol=1e-4)


def test_network_is_bitwise_the_same_whatever_networks_share_its_zoo(one_device, tmp_path, data_dir):
    """The tiny zoo's 13 networks trained among 13 others (a larger grid, where they sit at positions
    13-25, in other `lax.map` chunks) and 5 of them alone: bitwise the tiny zoo's numbers."""
    train_pipeline.train_and_evaluate(tiny(data_dir, learning_rates=(0.01, 0.05)), tmp_path / "more", progress=False)
    assert len(pd.read_csv(tmp_path / "more" / "hparams.csv")) == 2 * N_NETS
    _assert_same_networks(tmp_path / "more", one_device)
    train_pipeline.train_and_evaluate(tiny(data_dir, num_seeds=5), tmp_path / "five", progress=False)
    _assert_same_networks(one_device, tmp_path / "five")


def test_memory_limit_too_small_is_one_line_error(tmp_path, data_dir, capsys):
    from tests.zoo import train as cli_train

    assert cli_train(tmp_path, data_dir, "--config.memory_limit_mb=0.5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.memory_limit_mb" in err[0] and "cannot hold one network" in err[0]
    assert cli_train(tmp_path, data_dir, "--config.num_devices=4", workdir="b") == 2
    assert "config.num_devices" in capsys.readouterr().err
    assert cli_train(tmp_path, data_dir, "--config.chunk_size=-1", workdir="c") == 2
    assert "config.chunk_size" in capsys.readouterr().err


def test_plan_memory_chunks_are_equal_and_fit():
    for n in (1, 13, 100, 10_000):
        for d in (1, 3, 8):
            for per_device in (1, 2, 7, 1000):
                budget = 100 + per_device * 30 + 29
                p = train.plan_memory(n, d, state_bytes=10, step_bytes=10, fixed_bytes=100, budget_bytes=budget)
                assert p.chunk_size % d == 0 and p.num_chunks * p.chunk_size >= n
                assert p.chunk_size // d <= per_device  # each device holds what fits
                assert (p.num_chunks - 1) * p.chunk_size < n  # no empty chunk
    # worked by hand: (n, devices, networks a device holds) -> (chunk size, chunks)
    known = {
        (13, 8, 1): (8, 2),  # 13 = 8 + 5 (3 padding networks in the second chunk)
        (13, 8, 2): (16, 1),  # 2 per device: all 13 at once, padded to 16
        (100, 3, 7): (21, 5),  # 21 per chunk at most: 5 chunks, then 100 / 5 = 20 -> 21 (a multiple of 3)
        (10_000, 8, 1000): (5000, 2),  # 8000 per chunk at most: 2 chunks of 5000
        (1, 8, 7): (8, 1),
    }
    for (n, d, per_device), want in known.items():
        p = train.plan_memory(n, d, state_bytes=10, step_bytes=10, fixed_bytes=100, budget_bytes=100 + per_device * 30)
        assert (p.chunk_size, p.num_chunks) == want, (n, d, per_device, p)
    with pytest.raises(ValueError, match="cannot hold one network"):
        train.plan_memory(4, 1, 10, 10, fixed_bytes=100, budget_bytes=120)
    # vmap width 8: 13 networks on 1 device -> 16 (2 lax.map steps of 8), on 8 devices -> 8 each
    assert train.plan_memory(13, 1, 10, 10, 100, 10**6, vmap_chunk=8)[-3:] == (16, 1, 8)
    assert train.plan_memory(13, 8, 10, 10, 100, 10**6, vmap_chunk=8)[-3:] == (64, 1, 8)
    assert train.pad_networks(13, 8, 8) == 64 and train.pad_networks(13, 8) == 16
    # a device that holds 5 networks at once (5 × 30 bytes) vmaps 5, never 8: chunks of 5
    assert train.plan_memory(13, 1, 10, 10, 100, 100 + 160, vmap_chunk=8)[-3:] == (5, 3, 5)
    # Networks mapped in chunks of k hold the temporaries of k networks only: more fit per device.
    for k in (1, 8):
        for budget in (100 + 30, 100 + 30 * 8, 100 + 10_000):
            p = train.plan_memory(
                10**6, 2, state_bytes=5, step_bytes=20, fixed_bytes=100, budget_bytes=budget, vmap_chunk=k
            )
            fits = lambda c: c * 2 * 5 + min(c, k) * 20 <= budget - 100
            c_max = max(c for c in range(1, 2000) if fits(c))
            assert fits(p.chunk_size // 2)  # each device holds what fits
            assert p.num_chunks == -(-(10**6) // (2 * c_max))  # as few chunks as memory allows
    # A device's share that is not a multiple of k costs a third copy of the state (lax.map
    # concatenates its remainder): chunks are multiples of k, or that copy is counted.
    for n in (13, 1000, 4849, 10**6):
        for d in (1, 3):
            for budget in (100 + 2000, 100 + 5000, 100 + 10**5):
                for cap in (0, 20, 37):
                    k = 8
                    need = lambda m: m * 30 if m <= k else 20 * m + k * 10 + (10 * m if m % k else 0)
                    p = train.plan_memory(
                        n,
                        d,
                        state_bytes=10,
                        step_bytes=10,
                        fixed_bytes=100,
                        budget_bytes=budget,
                        chunk_size=cap,
                        vmap_chunk=k,
                    )
                    m = p.chunk_size // d
                    assert need(m) <= budget - 100, (n, d, budget, cap, p)
                    assert p.num_chunks * p.chunk_size >= n and (p.num_chunks - 1) * p.chunk_size < n
                    if cap:
                        assert m <= -(-cap // d)
                    # every device's share of every chunk is a multiple of the one vmap width: k,
                    # or the chunk_size's share where that is smaller
                    assert p.vmap_chunk == (min(k, -(-cap // d)) if cap else k), (n, d, budget, cap, p)
                    assert m % p.vmap_chunk == 0, (n, d, budget, cap, p)


def test_memory_estimate_bounds_the_compiled_epoch(mnist_slice):
    """Per-network estimate × N covers XLA's own accounting of the vmapped epoch, within 2×.

    (For tiny networks the estimate is looser: its two copies of the state and its evaluation
    temporaries weigh more against what XLA reuses.)
    """
    x, y, _, _ = mnist_slice
    c = config_lib.default_config()
    c.model.hidden, c.optimizer, c.num_seeds = (256, 128), "adam", 8
    model = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(256, 128))
    setup = train.Setup(model=model, optimizer="adam", batch_size=128, mean=(33.3,), std=(78.6,))
    state_b, step_b = train.network_memory(setup, (28, 28, 1), 500)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    n_params = sum(v.size for v in jax.tree.leaves(params))
    # float32 params and Adam's two moments, Adam's int32 count, our bool diverged flag and int32 step
    assert state_b == 3 * 4 * n_params + 4 + 1 + 4
    mesh = train.networks_mesh()
    fns = train.make_zoo_fns(setup, (28, 28, 1), 500, mesh)
    hp = train.shard(
        train.Hyper(*(np.asarray(f) for f in train.hyper_from_grid(config_lib.hyperparameter_grid(c)))), mesh
    )
    state = fns.init(hp)
    m = fns.train_epoch.lower(state, hp, np.int32(1), jnp.asarray(x), jnp.asarray(y)).compile().memory_analysis()
    measured = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    estimate = 8 * (2 * state_b + step_b) + x.nbytes + y.nbytes
    assert measured <= estimate <= 2 * measured


def _two_processes(code: str) -> list[str]:
    """Runs `code` in two processes joined by `jax.distributed` on loopback, one CPU device each
    (several devices of one process are the 8-device test's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess_on(
            code,
            devices=1,
            env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)},
        )
        for i in range(2)
    ]
    return [finish(p) for p in procs]


def test_two_processes_equal_one_device(one_device, tmp_path, data_dir):
    outs = _two_processes(f"""
        import jax
        from jaxweights.pipelines import train as train_pipeline
        train_pipeline.train_and_evaluate(tiny({str(data_dir)!r}, multihost=True), {str(tmp_path / 'run')!r}, progress=False)
        print("process", jax.process_index(), "of", jax.process_count(), "devices", jax.device_count())
    """)
    for i, out in enumerate(outs):
        assert f"process {i} of 2 devices 2" in out
    _assert_same_run(one_device, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "2" / "default").glob("ocdbt.process_*")) == [
        "ocdbt.process_0",
        "ocdbt.process_1",
    ]  # both hosts wrote their part of the checkpoint

    # `jaxweights analyze --multihost` in both processes: all compute, process 0 alone writes
    outs = _two_processes(f"""
        import os, tempfile, jax
        from jaxweights import cli
        made, mkdtemp = [], tempfile.mkdtemp
        tempfile.mkdtemp = lambda *a, **k: made.append(mkdtemp(*a, **k)) or made[-1]
        assert cli.main(["analyze", "--workdir", {str(tmp_path / 'run')!r}, "--multihost", "--noreport",
                         "--nodynamics", "--metrics", "wasserstein"]) == 0
        assert os.path.exists({str(tmp_path / 'run' / 'analysis' / 'stats.csv')!r})  # in place when it returns
        inside = [d for d in made if d.startswith({str(tmp_path)!r})]
        print("process", jax.process_index(), "of", jax.process_count(), "temporary folders in the workdir:",
              len(inside))
    """)
    for i, out in enumerate(outs):
        assert f"process {i} of 2 temporary folders in the workdir: {1 - i}" in out
    assert not list((tmp_path / "run").glob(".analysis*"))
    # the statistics of the sharded 2-process analysis equal one device's
    ref = params_pipeline.analyze_params(
        rundir.load_params(one_device / "params.npz"), tmp_path, metrics=["wasserstein"]
    )
    got = pd.read_csv(tmp_path / "run" / "analysis" / "stats.csv")
    assert len(got) == len(ref)
    np.testing.assert_allclose(got["value"], ref["value"], rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters(one_device, tmp_path, data_dir):
    train_pipeline.train_and_evaluate(tiny(data_dir, compute_dtype="bfloat16"), tmp_path / "run", progress=False)
    p16, p32 = dict(np.load(tmp_path / "run" / "params.npz")), dict(np.load(one_device / "params.npz"))
    assert all(v.dtype == np.float32 for v in p16.values())
    assert not np.allclose(p16["Dense_0/kernel"], p32["Dense_0/kernel"], rtol=1e-6, atol=1e-7)  # bf16 did run
    np.testing.assert_allclose(p16["Dense_0/kernel"], p32["Dense_0/kernel"], atol=0.02)
    m16, m32 = (pd.read_csv(d / "metrics.csv") for d in (tmp_path / "run", one_device))
    assert abs(m16.test_acc.mean() - m32.test_acc.mean()) < 0.02
    restored = checkpoints.restore_params(tmp_path / "run", 2)
    assert {v.dtype for v in jax.tree.leaves(restored)} == {np.dtype("float32")}
