"""Linear probes of a layer's representations and their decision regions on planes through images.

A softmax-regression readout per layer and epoch trained with optax on the probe set's
activations; its held-out accuracy, and the agreement of its decision regions between epochs on
planes through triples of probe images (Sharon & Dar 2024, arXiv 2405.17377, after Somepalli et
al. 2022, arXiv 2203.08124).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxweights.dynamics.common import Array, DynamicsError


def train_probe(
    x_nxd: Array, y_n: Array, num_classes: int, steps: int = 300, learning_rate: float = 0.05, l2: float = 1e-4
) -> tuple[Array, Array, Array, Array]:
    """Softmax-regression readout on one layer's activations, trained with optax (Adam, full batch).

    Features are standardised with the training set's mean and std first.

    Args:
      x_nxd: activations `(n, d)`.
      y_n: labels.
      num_classes: number of classes.
      steps: Adam steps.
      learning_rate: Adam's learning rate.
      l2: weight of the squared-weights penalty.

    Returns:
      `(w, b, mu, sd)`: weights `(d, C)`, bias `(C,)`, the standardisation `(d,)` `(d,)`.
    """
    x = x_nxd.astype(jnp.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    d = x.shape[1]
    params = (jnp.zeros((d, num_classes)), jnp.zeros((num_classes,)))
    tx = optax.adam(learning_rate)

    def loss(p):
        logits = xs @ p[0] + p[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_n).mean() + l2 * (p[0] ** 2).sum()

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params[0], params[1], mu, sd


def probe_predict(probe, x_nxd: Array) -> Array:
    """Class predicted by a probe for each row of `x`.

    Args:
      probe: `(w, b, mu, sd)` of `train_probe`.
      x_nxd: activations `(n, d)`.

    Returns:
      `(n,)` predicted classes.
    """
    w, b, mu, sd = probe
    return jnp.argmax(((x_nxd - mu) / sd) @ w + b, -1)


def plane_points(x_a: Array, x_b: Array, x_c: Array, resolution: int = 16, margin: float = 0.1) -> Array:
    """Images on the plane through three images: `a + α(b − a) + β(c − a)`, α, β on a grid.

    Sharon & Dar 2024 (arXiv 2405.17377), after Somepalli et al. 2022.

    Args:
      x_a, x_b, x_c: three images of the same shape.
      resolution: grid points per side; α and β run over [−margin, 1 + margin], so the three images
        sit inside the grid.
      margin: how far the grid reaches beyond the triangle.

    Returns:
      `(resolution², ...)` images.
    """
    t = jnp.linspace(-margin, 1 + margin, resolution)
    al, be = jnp.meshgrid(t, t, indexing="ij")
    al, be = al.reshape(-1, *([1] * x_a.ndim)), be.reshape(-1, *([1] * x_a.ndim))
    return x_a[None] + al * (x_b - x_a)[None] + be * (x_c - x_a)[None]


def choose_triples(labels: np.ndarray, num_planes: int, seed: int = 0, num_classes: int | None = None) -> np.ndarray:
    """`num_planes` triples of probe indices with three different labels each (seeded).

    Each triple draws three distinct classes among those present, then one example of each: no
    rejection loop, so it ends even when classes are missing.

    Args:
      labels: the probe set's labels.
      num_planes: triples to draw.
      seed: of the draw.
      num_classes: to name the missing classes in the error.

    Returns:
      `(num_planes, 3)` indices.

    Raises:
      DynamicsError: fewer than three classes among `labels` (naming the missing ones).
    """
    labels = np.asarray(labels).reshape(-1)
    present = np.unique(labels)
    if len(present) < 3:
        universe = range(num_classes) if num_classes else ()
        missing = [c for c in universe if c not in set(present.tolist())]
        raise DynamicsError(
            f"probe labels: decision-region planes need examples of 3 different classes; the probe set "
            f"has only class(es) {present.tolist()}" + (f" (missing: {missing})" if missing else "")
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_planes):
        cls = rng.choice(present, 3, replace=False)
        out.append([rng.choice(np.flatnonzero(labels == c)) for c in cls])
    return np.asarray(out, np.int64).reshape(-1, 3)
