"""Node strength and layer fluctuation against networkx graphs (MLP, CNN channels) and dense matrices."""

import networkx as nx
import numpy as np
import pytest

from jaxweights import models
from jaxweights.weights import strength


def _mlp(rng, n, widths):
    return {
        f"Dense_{l}": {"kernel": rng.normal(size=(n, a, b)), "bias": rng.normal(size=(n, b))}
        for l, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
    }


def _networkx_strengths(params, i, widths):
    """Signed in/out weighted degree of a DiGraph built from network i (+ bias for non-input)."""
    g = nx.DiGraph()
    for l in range(len(widths) - 1):
        w = params[f"Dense_{l}"]["kernel"][i]
        for a in range(widths[l]):
            for b in range(widths[l + 1]):
                g.add_edge((l, a), (l + 1, b), weight=w[a, b])
    out = []
    for l, width in enumerate(widths):
        bias = 0 if l == 0 else params[f"Dense_{l - 1}"]["bias"][i]
        s = np.array(
            [g.in_degree((l, k), weight="weight") + g.out_degree((l, k), weight="weight") for k in range(width)]
        )
        out.append(s + bias)
    return out


def test_mlp_matches_networkx_and_loop(x64):
    rng = np.random.default_rng(0)
    widths = [5, 4, 3, 2]
    params = _mlp(rng, 3, widths)
    got = strength.node_strength(params)
    assert list(got) == ["input", "Dense_0", "Dense_1", "Dense_2"]
    for i in range(3):  # a Python loop over networks == the vmapped result
        for name, ref in zip(got, _networkx_strengths(params, i, widths)):
            np.testing.assert_allclose(got[name][i], ref, rtol=1e-12, atol=1e-12)


def test_layer_fluctuation_is_std_of_strengths(x64):
    rng = np.random.default_rng(1)
    params = _mlp(rng, 4, [6, 5, 3])
    s = strength.node_strength(params)
    df = strength.layer_fluctuation(params)
    assert list(df.columns) == ["network", "layer", "statistic", "value", "undefined"]
    for name, arr in s.items():
        got = df[df.layer == name].sort_values("network").value.to_numpy()
        np.testing.assert_allclose(got, arr.std(axis=1, ddof=0), rtol=1e-12)


def _channel_graph_strengths(layers, i, feature_hw):
    """Channel-convention strengths of network i from a networkx MultiDiGraph with one edge per weight.

    Nodes are ``(layer index, channel)``; every conv kernel weight ``W[y, x, a, o]`` is its own edge
    from channel ``a`` to channel ``o``; a dense row ``r`` after a conv comes from the channel that
    flattening an ``(H, W, C)`` feature map in C order puts at position ``r`` (as the model's
    ``x.reshape((n, -1))``), found by flattening a map of channel indices, not by a formula.
    """
    g = nx.MultiDiGraph()
    bias = {}
    for l, (kernel, b) in enumerate(layers):
        k = kernel[i]
        if k.ndim == 4:
            for y, x, a, o in np.ndindex(*k.shape):
                g.add_edge((l, a), (l + 1, o), weight=k[y, x, a, o])
        else:
            prev = layers[l - 1][0][i] if l else None
            if prev is not None and prev.ndim == 4:
                c = prev.shape[-1]
                h, w = feature_hw
                source = np.broadcast_to(np.arange(c), (h, w, c)).reshape(-1)
            else:
                source = np.arange(k.shape[0])
            for r, o in np.ndindex(*k.shape):
                g.add_edge((l, int(source[r])), (l + 1, o), weight=k[r, o])
        for o in range(k.shape[-1]):
            bias[(l + 1, o)] = 0.0 if b is None else b[i][o]
    out = []
    for l in range(len(layers) + 1):
        nodes = sorted(n for n in g.nodes if n[0] == l)
        assert [n[1] for n in nodes] == list(range(len(nodes)))
        out.append(
            np.array(
                [g.in_degree(n, weight="weight") + g.out_degree(n, weight="weight") + bias.get(n, 0.0) for n in nodes]
            )
        )
    return out


@pytest.mark.parametrize("feature_hw", [(3, 2), (1, 1)])  # flatten of a 3 x 2 map; global pooling
def test_cnn_channel_strength_matches_networkx_graph(x64, feature_hw):
    rng = np.random.default_rng(2)
    n, (h, w) = 2, feature_hw
    params = {
        "Conv_0": {"kernel": rng.normal(size=(n, 3, 3, 2, 4)), "bias": rng.normal(size=(n, 4))},
        "Conv_1": {"kernel": rng.normal(size=(n, 3, 3, 4, 5))},  # no bias: contributes 0
        "Dense_0": {"kernel": rng.normal(size=(n, h * w * 5, 3)), "bias": rng.normal(size=(n, 3))},
        "Dense_1": {"kernel": rng.normal(size=(n, 3, 2)), "bias": rng.normal(size=(n, 2))},
    }
    got = strength.node_strength(params)
    assert list(got) == ["input", "Conv_0", "Conv_1", "Dense_0", "Dense_1"]
    assert [v.shape[1] for v in got.values()] == [2, 4, 5, 3, 2]
    layers = [(params[k]["kernel"], params[k].get("bias")) for k in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")]
    for i in range(n):
        for name, ref in zip(got, _channel_graph_strengths(layers, i, feature_hw)):
            np.testing.assert_allclose(got[name][i], ref, rtol=1e-12, atol=1e-12, err_msg=name)


def test_params_order_no_bias_and_bad_chain():
    rng = np.random.default_rng(3)
    ws = [4] + [3] * 11
    params = {
        f"Dense_{l}": {"kernel": rng.normal(size=(2, a, b)).astype(np.float32)}
        for l, (a, b) in enumerate(zip(ws[:-1], ws[1:]))
    }
    names = list(strength.node_strength(params))
    assert names[-2:] == ["Dense_9", "Dense_10"]  # the params' order, not lexicographic
    with pytest.raises(ValueError, match="cannot connect"):
        strength.node_strength({"Dense_0": {"kernel": np.ones((1, 3, 4))}, "Dense_1": {"kernel": np.ones((1, 5, 2))}})
    custom = strength.node_strength(params, layers=["Dense_0", "Dense_1"])
    np.testing.assert_allclose(custom["Dense_1"], params["Dense_1"]["kernel"].sum(1), rtol=1e-6)


def _dense_matrix(kernel, bias, hw, stride, padding):
    """The conv's dense matrix M[(h, w, c), (oh, ow, k)], float64, from the model's own Conv on one-hots."""
    kh, _, cin, cout = kernel.shape
    conv = models.Conv(cout, kh, stride, padding)
    variables = {"params": {"kernel": kernel, "bias": bias}}
    n_in = hw[0] * hw[1] * cin
    eye = np.eye(n_in).reshape(n_in, hw[0], hw[1], cin)
    y = np.asarray(conv.apply(variables, eye), np.float64)
    y0 = np.asarray(conv.apply(variables, np.zeros((1, hw[0], hw[1], cin))), np.float64)
    return (y - y0).reshape(n_in, -1), y.shape[1:]


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_conv_position_strength_is_dense_matrix_row_and_column_sums(x64, padding, stride, hw):
    rng = np.random.default_rng(5)
    kernel, bias = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4)
    m, out_shape = _dense_matrix(kernel, bias, hw, stride, padding)
    w_in, w_out = strength.conv_position_strength(kernel, bias, hw, stride, padding)
    assert w_in.shape == out_shape and w_out.shape == (*hw, 2)
    np.testing.assert_allclose(np.asarray(w_out).ravel(), m.sum(1), rtol=1e-10, atol=1e-12)
    in_ref = m.sum(0).reshape(out_shape) + bias
    np.testing.assert_allclose(np.asarray(w_in), in_ref, rtol=1e-10, atol=1e-12)
    if padding == "SAME" and stride == 1:  # border positions are touched by fewer taps
        assert not np.allclose(np.asarray(w_out)[0, 0], np.asarray(w_out)[2, 2])


def test_position_node_strength_of_conv_dense_chain(x64):
    """Conv -> Conv -> Dense (flatten), per position, against networkx-free explicit matrices."""
    rng = np.random.default_rng(6)
    n, hw = 2, (5, 4)
    params = {
        "Conv_0": {"kernel": rng.normal(size=(n, 3, 3, 1, 2)), "bias": rng.normal(size=(n, 2))},
        "Conv_1": {"kernel": rng.normal(size=(n, 3, 3, 2, 3)), "bias": rng.normal(size=(n, 3))},
        "Dense_0": {"kernel": rng.normal(size=(n, 3 * 2 * 3, 4)), "bias": rng.normal(size=(n, 4))},
    }
    got = strength.node_strength(params, conv_strength="position", input_hw=hw, strides=[1, 2, 1])
    for i in range(n):
        m0, s0 = _dense_matrix(params["Conv_0"]["kernel"][i], params["Conv_0"]["bias"][i], hw, 1, "SAME")
        m1, s1 = _dense_matrix(params["Conv_1"]["kernel"][i], params["Conv_1"]["bias"][i], s0[:2], 2, "SAME")
        m2 = params["Dense_0"]["kernel"][i]
        b0, b1 = (
            np.tile(params["Conv_0"]["bias"][i], s0[0] * s0[1]),
            np.tile(params["Conv_1"]["bias"][i], s1[0] * s1[1]),
        )
        np.testing.assert_allclose(got["input"][i], m0.sum(1), rtol=1e-10)
        np.testing.assert_allclose(got["Conv_0"][i], m0.sum(0) + b0 + m1.sum(1), rtol=1e-10)
        np.testing.assert_allclose(got["Conv_1"][i], m1.sum(0) + b1 + m2.sum(1), rtol=1e-10)
        np.testing.assert_allclose(got["Dense_0"][i], m2.sum(0) + params["Dense_0"]["bias"][i], rtol=1e-10)
    assert set(strength.node_strength(params)) == set(got)  # "channel" stays the default
    with pytest.raises(ValueError, match="input_hw"):
        strength.node_strength(params, conv_strength="position")
