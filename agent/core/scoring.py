"""How a query scores anchors from what their truncated SVDs kept (issue #15's scorers).

Every scorer reads the anchors' stacked SVDs (:mod:`agent.core.svd`): bases
``(n, k, d)`` float32 zero-padded to rank k, singular values ``(n, k)``, and the
exact member sums or means, so no member embedding is ever needed. Numeric core:
no I/O, float64 arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.core.svd import F32, F64

Scorer = Literal["rep", "energy", "projection", "peak", "average"]
"""How a query scores an anchor (see :func:`score_anchors`)."""
SCORERS: tuple[Scorer, ...] = ("rep", "energy", "projection", "peak", "average")

_VAR_TOL = 1e-5
"""A spread of member cosines below this fraction of their mean square is rounding residue."""
_PROJECT_BLOCK = 256
"""Anchors projected per block: a block's float64 copy (256 x k x d) stays in cache."""


def score_anchors(
    q: npt.ArrayLike, basis: F32, sigma: F32, means: F64, counts: npt.NDArray[np.int64], kind: Scorer
) -> F64:
    """Scores (n,) of n anchors for one query ``q`` (d,), from what each SVD kept.

    ``basis`` (n, k, d) and ``sigma`` (n, k) are zero-padded to rank k,
    ``means`` (n, d) are the exact member means, ``counts`` (n,) the members.
    With unit members, ``sum_i sigma_i^2 (b_i . q)^2 / n`` is the mean of the
    members' squared cosines to q (over the retained components), so:

    * ``"energy"``: its square root, the RMS member cosine (unsigned: an
      anchor anti-aligned with q scores high too);
    * ``"peak"``: mean member cosine plus the members' standard deviation of
      cosine, an upper-tail estimate that keeps the sign, equals the cosine
      for a one-member anchor, and lets a short stretch matching q lift the
      long anchor it was merged into;
    * ``"projection"``: ``|B q|``, the best cosine any direction of the
      retained subspace reaches (an upper bound of the best member);
    * ``"average"``: ``mean . q``, the members' mean cosine (exact, from the
      member sum): the dense memory's scores averaged over the anchor's span,
      not inflated by the spread of a mixed anchor as a normalised token is;
    * ``"rep"`` is not computed here (it is the representative's cosine).
    """
    vec = np.asarray(q, np.float64)
    return _score(vec, basis, sigma, lambda: np.asarray(means @ vec, np.float64), counts, kind)


def score_totals(
    q: npt.ArrayLike, basis: F32, sigma: F32, totals: F64, counts: npt.NDArray[np.int64], kind: Scorer
) -> F64:
    """:func:`score_anchors` from the member sums ``totals`` (n, d) instead of the means.

    ``mean . q`` is read as ``(total . q) / count``: no (n, d) array of means is
    made (16 MB at 4096 anchors, d 512), for a query or kept beside the sums.
    Equal to :func:`score_anchors` up to rounding (the same for ``"energy"``
    and ``"projection"``, which do not read the means).
    """
    vec = np.asarray(q, np.float64)
    n = np.maximum(counts, 1).astype(np.float64)
    return _score(vec, basis, sigma, lambda: np.asarray(totals @ vec, np.float64) / n, counts, kind)


def _score(
    vec: F64, basis: F32, sigma: F32, first_of: Callable[[], F64], counts: npt.NDArray[np.int64], kind: Scorer
) -> F64:
    """The scorers of :func:`score_anchors`; ``first_of()`` gives the mean member cosines (n,)."""
    return score_projected(lambda: project(basis, vec), sigma, first_of, counts, kind)


def score_projected(
    proj_of: Callable[[], F64],
    sigma: F32,
    first_of: Callable[[], F64],
    counts: npt.NDArray[np.int64],
    kind: Scorer,
) -> F64:
    """The scorers of :func:`score_anchors` from the projections ``proj_of()`` (n, k) = ``basis @ q``.

    For stacks kept in pieces (:mod:`agent.core.slots`): each piece is projected on its own,
    the per-anchor arithmetic runs once over all of them (the same numbers row by row).
    """
    if kind == "average":
        return first_of()
    proj = proj_of()  # (n, k)
    if kind == "projection":
        return np.asarray(np.sqrt(np.sum(proj**2, axis=1)), np.float64)
    n = np.maximum(counts, 1).astype(np.float64)
    second = np.sum((sigma.astype(np.float64) * proj) ** 2, axis=1) / n
    if kind == "energy":
        return np.asarray(np.sqrt(second), np.float64)
    first = first_of()
    if kind == "peak":
        var = second - first**2
        # float32 bases leave ~1e-7 relative residue: below that the members do not spread.
        var[var < _VAR_TOL * second] = 0.0
        return np.asarray(first + np.sqrt(var), np.float64)
    raise ValueError(f"unknown scorer {kind!r}")


def project(basis: F32, vec: F64, out: F64 | None = None) -> F64:
    """``basis.astype(float64) @ vec`` (n, k), the same numbers, block by block.

    Widening the whole (n, k, d) float32 stack first writes and reads twice its
    size (64 MB at 4096 anchors, d 512) on every query; a block at a time the
    copy stays in cache (about 4x less CPU). Each row is the same float64 dot
    product either way, so the scores do not change. ``out`` (n, k): written instead of a new array.
    """
    if out is None:
        out = np.empty(basis.shape[:-1], np.float64)
    for lo in range(0, len(basis), _PROJECT_BLOCK):
        hi = lo + _PROJECT_BLOCK
        np.matmul(basis[lo:hi].astype(np.float64), vec, out=out[lo:hi])
    return out
