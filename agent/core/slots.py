"""The anchors' SVDs and tokens in fixed slots of chunk-grown stacks, the stacks queries score.

Each live anchor owns one *slot*: a row of the stacks (basis (rank, d) zero-padded, sigma,
member sum, member count, token). An anchor that changes (a join, a merge, a new anchor) gets
new arrays from :mod:`agent.core.svd` as before; :meth:`SlotStacks.put` then copies them into
its slot and the anchor keeps views of the slot, so the fresh arrays are freed at once, while
they are still the newest blocks of the heap. A merged-away anchor's slot is released and
reused by the next new anchor (lowest free slot first).

Why: when a query stacked every anchor into new (n, k, d) arrays (and the anchors kept views of
them), the first query after a long ingest copied the whole memory and freed thousands of
per-anchor arrays scattered through the heap. glibc keeps such holes resident (31 MB at 8 h of
one stream, 4096 anchors, d 512); here nothing is stacked per query, so nothing is freed in
bulk. The stacks grow one chunk of ``CHUNK`` rows at a time, never by copying, so they hold at
most ``budget + 1`` slots rounded up to a chunk (the rows past the highest used slot are never
written, hence never resident).

Scores are computed for every slot, free ones included, and read back in time order by slot:
at most one chunk of rows more than the anchors.
"""

from __future__ import annotations

import heapq
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.core.scoring import Scorer, project, score_projected
from agent.core.svd import F32, F64, TruncatedSVD

CHUNK = 256
"""Rows added when the stacks are full (3.6 MB at rank 4, d 512)."""


class Slotted(Protocol):
    """What :class:`SlotStacks` stores of an anchor."""

    slot: int
    svd: TruncatedSVD
    rep: F32


class SlotStacks:
    """Chunk-grown stacks with one row per anchor, in slot (not time) order."""

    def __init__(self, rank: int, dim: int, chunk: int = CHUNK) -> None:
        if rank < 1 or dim < 1 or chunk < 1:
            raise ValueError("rank, dim and chunk must be >= 1")
        self.rank = rank
        self.dim = dim
        self.chunk = chunk
        self.basis: list[F32] = []
        """(chunk, rank, d) float32 per chunk; rows past an SVD's rank are zero."""
        self.sigma: list[F32] = []
        """(chunk, rank) float32 per chunk."""
        self.totals: list[F64] = []
        """(chunk, d) float64 member sums per chunk."""
        self.counts: list[npt.NDArray[np.int64]] = []
        """(chunk,) member counts per chunk; 0 in a free slot."""
        self.reps: list[F32] = []
        """(chunk, d) float32 tokens per chunk."""
        self._free: list[int] = []

    @property
    def capacity(self) -> int:
        """Slots allocated (used and free)."""
        return len(self.basis) * self.chunk

    @property
    def nbytes(self) -> int:
        """Bytes the stacks reserve (every allocated row, used or not)."""
        stacks = (self.basis, self.sigma, self.totals, self.counts, self.reps)
        return sum(int(a.nbytes) for group in stacks for a in group)

    def put(self, anchor: Slotted) -> None:
        """Copy the anchor's SVD and token into its slot (taking a free one first if it has none).

        The anchor then holds views of its slot (``svd.basis``, ``svd.total``, ``rep``); its own
        arrays are dropped. Raises ValueError for an SVD of another rank or dimension.
        """
        svd = anchor.svd
        r = svd.basis.shape[0]
        if r > self.rank or svd.dim != self.dim or anchor.rep.shape != (self.dim,):
            raise ValueError(
                f"an SVD of {r} rows and dim {svd.dim} does not fit rank {self.rank}, d {self.dim}"
            )
        if anchor.slot < 0:
            anchor.slot = self._take()
        c, i = divmod(anchor.slot, self.chunk)
        basis, sigma, total, rep = self.basis[c][i], self.sigma[c][i], self.totals[c][i], self.reps[c][i]
        basis[:r] = svd.basis
        basis[r:] = 0.0
        sigma[:r] = svd.sigma
        sigma[r:] = 0.0
        total[:] = svd.total
        rep[:] = anchor.rep
        self.counts[c][i] = svd.count
        svd.share(basis[:r], total)
        anchor.rep = rep

    def release(self, anchor: Slotted) -> None:
        """Free the anchor's slot (it died in a merge); its views must not be read afterwards."""
        if anchor.slot < 0:
            return
        c, i = divmod(anchor.slot, self.chunk)
        self.counts[c][i] = 0
        heapq.heappush(self._free, anchor.slot)
        anchor.slot = -1

    def _take(self) -> int:
        if not self._free:
            self._grow()
        return heapq.heappop(self._free)

    def _grow(self) -> None:
        first = self.capacity
        n, k, d = self.chunk, self.rank, self.dim
        self.basis.append(np.zeros((n, k, d), np.float32))
        self.sigma.append(np.zeros((n, k), np.float32))
        self.totals.append(np.zeros((n, d), np.float64))
        self.counts.append(np.zeros(n, np.int64))
        self.reps.append(np.zeros((n, d), np.float32))
        for slot in range(first, first + n):
            heapq.heappush(self._free, slot)

    def scores(self, query: F64, slots: npt.NDArray[np.int64], scorer: Scorer) -> F64:
        """Scores (n,) of the anchors in ``slots`` (time order) by ``scorer``, from the stacks.

        :func:`agent.core.scoring.score_projected` over the used slots (the free ones among them
        included), projected chunk by chunk, read back by slot: each anchor's score does not
        depend on where its slot lies (a restored memory with other slots scores the same bits).
        """
        # Slots are taken lowest first, so the used ones sit below the highest: rows past it
        # (a chunk's untouched tail) are not scored.
        if not len(slots):
            return np.zeros(0)
        end = int(slots.max()) + 1
        pieces = [(c * self.chunk, min((c + 1) * self.chunk, end)) for c in range(-(-end // self.chunk))]

        def proj_of() -> F64:
            proj = np.empty((end, self.rank), np.float64)
            for c, (lo, hi) in enumerate(pieces):
                project(self.basis[c][: hi - lo], query, out=proj[lo:hi])
            return proj

        # The small per-slot arrays joined into one (sigma, counts: 24 bytes a slot).
        sigma = np.concatenate([self.sigma[c][: hi - lo] for c, (lo, hi) in enumerate(pieces)])
        counts = np.concatenate([self.counts[c][: hi - lo] for c, (lo, hi) in enumerate(pieces)])
        n = np.maximum(counts, 1).astype(np.float64)

        def first_of() -> F64:
            # einsum, not ``@``: BLAS's matrix-vector product rounds a row differently with the
            # number of rows, and the rows scored here depend on where the slots lie; einsum
            # gives each row the same float64 dot product wherever it sits.
            sums = np.empty(end, np.float64)
            for c, (lo, hi) in enumerate(pieces):
                np.einsum("ij,j->i", self.totals[c][: hi - lo], query, out=sums[lo:hi])
            return sums / n

        every = score_projected(proj_of, sigma, first_of, counts, scorer)
        return np.asarray(every[slots], np.float64)

    def gather_reps(self, slots: npt.NDArray[np.int64]) -> F32:
        """The tokens (n, d) float32 of ``slots``, in that order (a new array)."""
        out = np.empty((len(slots), self.dim), np.float32)
        chunk, row = np.divmod(slots, self.chunk)
        for c, stack in enumerate(self.reps):
            sel = chunk == c
            if np.any(sel):
                out[sel] = stack[row[sel]]
        return out
