"""Memory compression strategies compared at an equal token budget (SMORE's ablation).

Every strategy takes the same stream of items (start, end, unit embedding),
times increasing, and returns the compressed memory as :class:`Items`
``(starts (n,), ends (n,), tokens (n, d))`` with ``n <= budget``. Tokens are
unit vectors (queries score them by cosine).

All strategies except ``svd`` group *consecutive* items into runs; a run's
token spans from its first item's start to its last item's end, so when the
input items tile time (each ends where the next starts) the output tiles the
same range without overlap.

Online or not:

* ``dense`` keeps every item: online, unbounded (the upper bound);
* ``uniform`` keeps evenly spaced items: needs the total count in advance,
  so it is offline (fine for a bench, impossible on a live stream);
* ``selection`` and ``avgpool`` apply an online rule with a threshold, but the
  threshold that lands exactly on the budget is found by bisection over the
  whole stream: an offline tuning a live deployment could not do, which
  favours them in this comparison;
* ``svd`` (ours) is :class:`agent.core.memory.Memory`: online with a hard budget.
  With a scorer other than ``"rep"`` its queries read each anchor's retained
  SVD, so the memory carries its own ``score`` function (:attr:`Items.score`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from agent.config import Representative
from agent.core.scoring import Scorer
from agent.core.svd import MergeRule
from agent.errors import ConfigError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

BISECT_STEPS = 40
"""Bisection steps for thresholds in [-1, 1]: far below float32 cosine resolution."""


class Items(NamedTuple):
    """A time-ordered stream of embeddings, or a compressed memory of one."""

    starts: F64
    ends: F64
    embs: F32

    def scores(self, queries: F32) -> F64:
        """(Q, n) cosines of unit queries (Q, d) with the tokens."""
        return np.asarray(queries.astype(np.float64) @ self.embs.astype(np.float64).T, np.float64)

    @property
    def bytes_held(self) -> int:
        """What the tokens (float32) and their times take."""
        n, d = self.embs.shape
        return int(n * (4 * d + 16))

    @classmethod
    def of(cls, items: Iterable[tuple[float, float, npt.ArrayLike]]) -> Items:
        """Collect ``(start, end, embedding)`` tuples, checking order and shapes."""
        rows = list(items)
        if not rows:
            raise ConfigError("a strategy needs at least one item")
        starts = np.array([r[0] for r in rows], np.float64)
        ends = np.array([r[1] for r in rows], np.float64)
        embs = np.stack([np.asarray(r[2], np.float32) for r in rows])
        return check(cls(starts, ends, embs))


class MemoryItems(NamedTuple):
    """A compressed memory that scores queries its own way (the SVD memory's scorer)."""

    starts: F64
    ends: F64
    embs: F32
    """(n, d) the tokens handed on (one per anchor)."""
    score: Callable[[F32], F64] | None
    """(Q, d) unit queries -> (Q, n) scores; None: cosine with ``embs``."""
    nbytes: int
    """Bytes the memory holds (bases, sigmas, sums, tokens, bookkeeping)."""
    overlay: Callable[[F32], tuple[F64, F64, F64]] | None = None
    """The finer level: (Q, d) queries -> (starts (m,), ends (m,), scores (Q, m)), least
    distinctive first; each stretch speaks for its span over the coarse tokens."""
    detail_nbytes: int = 0
    """Of ``nbytes``, what the finer level holds (its stretches' SVDs and spans)."""
    runs: Callable[[F32], tuple[F64, F64]] | None = None
    """Sub-runs inside the anchors: (Q, d) queries -> (starts (m,), scores (Q, m)); the runs
    tile the anchors, so where present they replace the coarse tokens' curve."""

    def scores(self, queries: F32) -> F64:
        """(Q, n) scores of unit queries (Q, d)."""
        if self.score is not None:
            return self.score(queries)
        return Items(self.starts, self.ends, self.embs).scores(queries)

    @property
    def bytes_held(self) -> int:
        return self.nbytes


Compressed = Items | MemoryItems
"""What a strategy returns."""


def check(items: Items) -> Items:
    """Validate a stream: non-empty, increasing starts, ``end >= start``, finite (n, d) embeddings."""
    starts, ends, embs = items
    n = starts.shape[0] if starts.ndim == 1 else -1
    if n < 1 or ends.shape != (n,) or embs.ndim != 2 or embs.shape[0] != n:
        raise ConfigError(
            f"items need shapes (n,), (n,), (n, d) with n >= 1; got {starts.shape}, {ends.shape}, {embs.shape}"
        )
    if not (np.all(np.isfinite(starts)) and np.all(np.isfinite(ends)) and np.all(np.isfinite(embs))):
        raise ConfigError("items have non-finite times or embeddings")
    if np.any(np.diff(starts) <= 0) or np.any(ends < starts):
        raise ConfigError("item times must increase and each end must not precede its start")
    return items


def unit_rows(x: npt.NDArray[np.floating]) -> F32:
    """Each row of ``x`` (n, d) scaled to unit length (an all-zero row stays zero), as float32."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def pooled_runs(items: Items, firsts: I64, tokens: npt.NDArray[np.floating]) -> Items:
    """The memory made of runs beginning at the ``firsts`` indices, one token each."""
    lasts = np.append(firsts[1:] - 1, items.starts.shape[0] - 1)
    return Items(items.starts[firsts].copy(), items.ends[lasts].copy(), unit_rows(tokens))


def _budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ConfigError(f"budget must be a positive integer, got {budget!r}")
    return int(budget)


def dense(items: Items, budget: int | None = None) -> Items:
    """Every item kept (ignores the budget): the upper bound and the naive peer."""
    starts, ends, embs = check(items)
    return Items(starts.copy(), ends.copy(), unit_rows(embs))


def uniform(items: Items, budget: int) -> Items:
    """Evenly spaced items, each covering the span until the next kept one. Offline."""
    n, budget = check(items).starts.shape[0], _budget(budget)
    firsts = np.unique(np.floor(np.arange(min(n, budget)) * (n / min(n, budget))).astype(np.int64))
    return pooled_runs(items, firsts, items.embs[firsts])


def _select(embs: F32, tau: float) -> I64:
    """Online rule: keep an item unless its cosine to the last kept one is >= tau."""
    kept = [0]
    last = embs[0]
    for i in range(1, embs.shape[0]):
        if float(embs[i] @ last) < tau:
            kept.append(i)
            last = embs[i]
    return np.asarray(kept, np.int64)


def _pool(embs: F64, tau: float) -> tuple[I64, F64]:
    """Online rule: an item joins the current run when its cosine to the run's mean direction is >= tau."""
    firsts, sums = [0], []
    run, sq = embs[0].copy(), float(embs[0] @ embs[0])
    for i in range(1, embs.shape[0]):
        e = embs[i]
        dot = float(e @ run)
        if dot >= tau * math.sqrt(sq):
            run += e
            sq += 2.0 * dot + float(e @ e)  # |run + e|^2 without another pass over run
        else:
            sums.append(run)
            firsts.append(i)
            run, sq = e.copy(), float(e @ e)
    sums.append(run)
    return np.asarray(firsts, np.int64), np.stack(sums)


def _bisect(count: Callable[[float], int], budget: int) -> float:
    """The largest threshold found whose count fits the budget.

    Counts grow with the threshold (almost always monotonically: which items
    are kept feeds back into later comparisons), so the search keeps a
    threshold known to fit (``lo``) and one known not to (``hi``).
    """
    lo, hi = -1.0, 1.0 + 1e-6  # tau = -1 keeps one run; above 1 every item is its own run
    if count(hi) <= budget:
        return hi
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if count(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def selection(items: Items, budget: int) -> Items:
    """Frame selection: drop items too similar (cosine >= tau) to the last kept one.

    tau is tuned by bisection to fit the budget; the kept item is the token.
    """
    embs, budget = unit_rows(check(items).embs), _budget(budget)
    tau = _bisect(lambda t: int(_select(embs, t).shape[0]), budget)
    firsts = _select(embs, tau)
    return pooled_runs(items, firsts, embs[firsts])


def avgpool(items: Items, budget: int) -> Items:
    """Average pooling of runs of similar consecutive items, token = normalised run mean.

    An item joins the current run while its cosine to the run's mean is >= tau;
    tau is tuned by bisection to fit the budget (the variant chosen over greedy
    pair merging, which with a mean token would be SVD merging with the mean
    representative minus the online theta rule).
    """
    embs, budget = unit_rows(check(items).embs).astype(np.float64), _budget(budget)
    tau = _bisect(lambda t: int(_pool(embs, t)[0].shape[0]), budget)
    firsts, sums = _pool(embs, tau)
    return pooled_runs(items, firsts, sums)


def svd(
    items: Items,
    budget: int,
    representative: Representative = "smore",
    *,
    theta: float = 0.95,
    rank: int = 4,
    merge: MergeRule = "cosine",
    scorer: Scorer = "rep",
    detail: int = 0,
    runs: int = 0,
) -> MemoryItems:
    """SVD merging (ours): the stream fed through :class:`agent.core.memory.Memory`.

    The defaults are SMORE's rules as first built (theta 0.95, most-similar
    pair merged, representative scored); the engine's defaults are
    :data:`agent.core.memory.DEFAULT_MERGE` and ``DEFAULT_SCORER``. ``detail`` tokens of the
    budget go to the finer level (two resolutions), the rest to the coarse anchors.
    """
    from agent.core.memory import Memory  # the core engine; imported late so the other strategies stand alone

    if representative not in ("smore", "mean"):
        raise ConfigError(f"representative must be 'smore' or 'mean', got {representative!r}")
    starts, ends, embs = check(items)
    try:
        mem = Memory(
            embs.shape[1],
            budget=_budget(budget - detail),
            theta=theta,
            rank=rank,
            representative=representative,
            merge=merge,
            scorer=scorer,
            detail=detail,
            runs=runs,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for s, e, v in zip(starts, ends, embs, strict=True):
        mem.add(float(s), float(e), v)
    m_starts, m_ends, reps = mem.matrix()

    def score(queries: F32) -> F64:
        return np.stack([mem.scores(q) for q in np.asarray(queries, np.float64)])

    def overlay(queries: F32) -> tuple[F64, F64, F64]:
        found = [mem.detail_scores(q) for q in np.asarray(queries, np.float64)]
        starts, ends, _ = found[0]
        return starts, ends, np.stack([f[2] for f in found])

    def run_curve(queries: F32) -> tuple[F64, F64]:
        found = [mem.run_scores(q) for q in np.asarray(queries, np.float64)]
        return found[0][0], np.stack([f[2] for f in found])

    return MemoryItems(
        np.array(m_starts, np.float64),
        np.array(m_ends, np.float64),
        unit_rows(reps),
        None if scorer == "rep" else score,
        mem.nbytes,
        overlay if detail else None,
        mem.detail.nbytes,
        run_curve if runs else None,
    )


STRATEGIES: dict[str, Callable[[Items, int], Compressed]] = {
    "dense": dense,
    "uniform": uniform,
    "selection": selection,
    "avgpool": avgpool,
    "svd-smore": lambda items, budget: svd(items, budget, "smore"),
    "svd-mean": lambda items, budget: svd(items, budget, "mean"),
}
"""Every strategy of the comparison by name, each ``(items, budget) -> memory``."""
