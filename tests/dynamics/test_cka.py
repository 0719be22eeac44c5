"""CKA against float64 numpy references (Kornblith et al. 2019; Nguyen et al. 2021; Song et al. 2012)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import ortho_group

from jaxweights import dynamics
from tests.dynamics.references import (
    np_hsic_u_statistic,
    np_hsic_unbiased,
    np_linear_cka,
    np_minibatch_cka,
    np_minibatch_cka_centred,
)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20))
    y = x @ rng.normal(size=(20, 30)) + 0.5 * rng.normal(size=(60, 30))
    return x, y


def test_linear_cka_equals_numpy(x64, feats):
    x, y = feats
    assert float(dynamics.cka_linear(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(np_linear_cka(x, y), rel=1e-10)


def test_unbiased_hsic_equals_u_statistic_and_closed_form(x64):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    k, l = x @ x.T, y @ y.T
    ours = float(dynamics.hsic_unbiased(jnp.asarray(k), jnp.asarray(l)))
    assert ours == pytest.approx(np_hsic_u_statistic(k, l), rel=1e-9)
    assert ours == pytest.approx(np_hsic_unbiased(k, l), rel=1e-9)


def test_minibatch_cka_equals_numpy(x64, feats):
    x, y = feats
    ours = float(dynamics.cka_minibatch(jnp.asarray(x), jnp.asarray(y), 20))
    assert ours == pytest.approx(np_minibatch_cka(x, y, 20), rel=1e-9)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_identity_orthogonal_and_scaling_invariance(x64, feats, unbiased):
    x, y = feats
    cka = (
        (lambda a, b: dynamics.cka_minibatch(jnp.asarray(a), jnp.asarray(b), 20))
        if unbiased
        else (lambda a, b: dynamics.cka_linear(jnp.asarray(a), jnp.asarray(b)))
    )
    base = float(cka(x, y))
    assert float(cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(30, random_state=3)
    assert float(cka(x, y @ q)) == pytest.approx(base, rel=1e-10)
    assert float(cka(7.5 * x, 0.01 * y)) == pytest.approx(base, rel=1e-10)
    assert 0.0 < base < 1.0


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_equals_pairwise_loop(x64, unbiased):
    rng = np.random.default_rng(2)
    reps = [rng.normal(size=(40, d)) for d in (5, 8, 13)]
    reps[2][:, :5] += 2 * reps[0]
    if unbiased:
        grams = jnp.stack([dynamics.minibatch_grams(jnp.asarray(r), 10) for r in reps])
        ref = [[np_minibatch_cka(a, b, 10) for b in reps] for a in reps]
    else:
        grams = jnp.stack([dynamics.gram(jnp.asarray(r)) for r in reps])
        ref = [[np_linear_cka(a, b) for b in reps] for a in reps]
    np.testing.assert_allclose(np.asarray(dynamics.cka_matrix(grams, unbiased)), np.asarray(ref), rtol=1e-9)


def test_unbiased_hsic_is_invariant_to_a_constant_feature_offset(x64):
    """Why centring the features is allowed for the unbiased HSIC: Song et al.'s estimator on the
    uncentred Gram matrices (U-statistic and closed form, float64 at offsets where float64 is still
    exact enough) does not change when a constant vector is added to every example's features."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    base = np_hsic_u_statistic(x @ x.T, y @ y.T)
    xo, yo = x + rng.normal(size=4) * 3, y + rng.normal(size=3) * 3
    assert np_hsic_u_statistic(xo @ xo.T, yo @ yo.T) == pytest.approx(base, rel=1e-9)
    assert np_hsic_unbiased(xo @ xo.T, yo @ yo.T) == pytest.approx(base, rel=1e-9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert np_hsic_unbiased(xc @ xc.T, yc @ yc.T) == pytest.approx(base, rel=1e-9)
    x, y = rng.normal(size=(60, 20)), rng.normal(size=(60, 30))
    ours = float(dynamics.cka_minibatch(jnp.asarray(x + 5.0), jnp.asarray(y - 2.0), 20))
    assert ours == pytest.approx(np_minibatch_cka(x + 5.0, y - 2.0, 20), rel=1e-8)  # uncentred float64 formula


@pytest.mark.parametrize("mean", [0.0, 1e2, 1e3, 1e4])
def test_cka_in_float32_equals_float64_reference_at_large_feature_means(mean):
    """Blown-up networks have activations with large means: float32 CKA must still match float64.

    Uncentred float32 Gram matrices gave unbiased CKA 1.58 at mean 1e2 and NaN at 1e3. Measured
    error with centred features: below 2e-7 at every mean (10 seeds); tolerance 1e-5."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 30))
    y = x @ rng.normal(size=(30, 40)) + 2 * rng.normal(size=(200, 40))
    off = mean * rng.uniform(0.5, 1.5, size=40)
    xs, ys = (x + off[:30]).astype(np.float32), (y + off).astype(np.float32)  # what float32 activations hold
    x64_, y64_ = xs.astype(np.float64), ys.astype(np.float64)
    lin = lambda a, b: float(dynamics.cka_linear(jnp.asarray(a), jnp.asarray(b)))
    unb = lambda a, b: float(dynamics.cka_minibatch(jnp.asarray(a), jnp.asarray(b), 50))
    assert lin(xs, ys) == pytest.approx(np_linear_cka(x64_, y64_), abs=1e-5)
    assert unb(xs, ys) == pytest.approx(np_minibatch_cka_centred(x64_, y64_, 50), abs=1e-5)
    q = ortho_group.rvs(40, random_state=7).astype(np.float32)
    for cka in (lin, unb):
        assert cka(xs, xs) == pytest.approx(1.0, abs=1e-5)
        base = cka(xs, ys)
        assert cka(xs, ys @ q) == pytest.approx(base, abs=1e-5)  # orthogonal transform
        assert cka(3.0 * xs, 0.25 * ys) == pytest.approx(base, abs=1e-5)  # isotropic scaling
        assert cka(xs + np.float32(1e3), ys) == pytest.approx(base, abs=1e-5)  # constant offset
    # The matrix form used for layer x layer, epoch x epoch and network x network CKA agrees.
    for unbiased, ref in ((False, np_linear_cka(x64_, y64_)), (True, np_minibatch_cka_centred(x64_, y64_, 50))):
        g = jnp.stack(
            [
                dynamics.minibatch_grams(jnp.asarray(a), 50) if unbiased else dynamics.gram(jnp.asarray(a))
                for a in (xs, ys)
            ]
        )
        assert float(dynamics.cka_matrix(g, unbiased)[0, 1]) == pytest.approx(ref, abs=1e-5)
