"""Class-stratified subsets: the one draw behind every `max_train` / `max_test` and probe set."""

from __future__ import annotations

import numpy as np

__all__ = ["SUBSET_SEED", "stratified_indices"]

SUBSET_SEED = 0  # the seed of every max_train/max_test draw: all runs and analyses see the same subset


def stratified_indices(labels_n: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """n indices into `labels_n`, a seeded class-stratified draw without replacement, in random order.

    Each class present gets its proportional share n·c_k/N rounded by largest remainders
    (Hamilton's method: every share is within one of n·c_k/N), raised to at least one example
    per present class when n is at least the number of classes (taken back from the classes most
    over their share). Within a class the examples are a uniform draw; the result is shuffled, so
    it is never grouped by class. Same labels, n and seed: same indices.

    Args:
      labels_n: (N,) class labels (any values `np.unique` can sort).
      n: how many indices, 0 <= n <= N.
      seed: seed of `np.random.default_rng`.

    Returns:
      (n,) int64 indices, all distinct.
    """
    labels_n = np.asarray(labels_n).reshape(-1)
    total = labels_n.shape[0]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= total:
        raise ValueError(f"stratified_indices: n must be an integer in [0, {total}], got {n!r}")
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels_n, return_inverse=True, return_counts=True)
    share = n * counts / total
    alloc = np.floor(share).astype(np.int64)
    tiebreak = rng.random(len(classes))  # seeded, never by class order
    short = n - int(alloc.sum())
    order = np.lexsort((tiebreak, -(share - alloc)))  # largest remainder first
    alloc[order[:short]] += 1
    if n >= len(classes):
        for k in np.flatnonzero(alloc == 0):  # one each for the classes rounded to none
            alloc[k] = 1
            over = np.where(alloc > 1, alloc - share, -np.inf)
            alloc[int(np.argmax(over))] -= 1
    picked = [rng.choice(np.flatnonzero(inverse == k), size=int(a), replace=False) for k, a in enumerate(alloc) if a]
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return rng.permutation(out).astype(np.int64)
