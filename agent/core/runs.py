"""Where inside an anchor a query matches: a bounded list of sub-runs on the anchor's own basis.

A full memory at 1/30 of dense tokens keeps anchors ~15 s long on average, and a
needle is often shorter: the coarse scorer finds the right anchor, but the whole
anchor span is then the answer, and its overlap with the needle falls below
IoU 0.5. An anchor with sub-runs keeps, for at most ``cap`` consecutive runs of
its members, the run's start time, member count and mean *coefficients on the
anchor's rank-k basis* (k numbers, not d): ``mean_run ≈ coefs @ basis``. A
query already projected on the basis (``basis @ q``, what the energy scorer
computes) scores every run in O(k), so the run whose members best match the
query trims the anchor's span.

Upkeep stays O(d*k^2) per added embedding and the bytes stay flat once the
memory is full (``cap`` runs of k + 2 numbers per anchor): when a member joins
or two anchors merge, the runs' coefficients are carried to the new basis by
the k x k matrix ``old_basis @ new_basis.T`` (exact for the part of a run's
mean inside the old span), and while more than ``cap`` runs remain the
adjacent pair whose merge adds the least squared error around the run means
(Ward's criterion, on the coefficients) becomes one run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(eq=False)
class Runs:
    """Sub-runs of one anchor in time order: starts (m,), member counts (m,), coefs (m, k)."""

    starts: F64
    """(m,) stream seconds where each run begins; the first is the anchor's start."""
    counts: I64
    """(m,) members of each run (>= 1)."""
    coefs: F32
    """(m, r) each run's member mean on the anchor's basis rows (r = the basis' row count)."""

    @classmethod
    def single(cls, start: float, vec: F64, basis: F32) -> Runs:
        """One run of one member ``vec`` (d,) on ``basis`` (r, d)."""
        coefs = (basis.astype(np.float64) @ vec).astype(np.float32)[None, :]
        return cls(np.array([start], np.float64), np.ones(1, np.int64), coefs)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def rebased(self, old: F32, new: F32) -> Runs:
        """These runs on the basis ``new`` (r', d), from the basis ``old`` (r, d) they were on."""
        turn = old.astype(np.float64) @ new.astype(np.float64).T  # (r, r')
        coefs = (self.coefs.astype(np.float64) @ turn).astype(np.float32)
        return Runs(self.starts, self.counts, coefs)

    def joined(self, other: Runs, cap: int) -> Runs:
        """Both run lists (``other`` later in time, same basis), capped at ``cap`` runs."""
        return Runs(
            np.concatenate([self.starts, other.starts]),
            np.concatenate([self.counts, other.counts]),
            np.concatenate([self.coefs, other.coefs]),
        ).capped(cap)

    def capped(self, cap: int) -> Runs:
        """Merge the cheapest adjacent runs (Ward's cost on the coefficients) until ``cap`` remain."""
        starts, counts = self.starts, self.counts
        coefs = self.coefs.astype(np.float64)
        while starts.shape[0] > cap:
            n = counts.astype(np.float64)
            diff = coefs[1:] - coefs[:-1]
            cost = n[1:] * n[:-1] / (n[1:] + n[:-1]) * np.sum(diff * diff, axis=1)
            i = int(np.argmin(cost))
            merged = (n[i] * coefs[i] + n[i + 1] * coefs[i + 1]) / (n[i] + n[i + 1])
            coefs = np.concatenate([coefs[:i], merged[None, :], coefs[i + 2 :]])
            counts = np.concatenate([counts[:i], [counts[i] + counts[i + 1]], counts[i + 2 :]])
            starts = np.delete(starts, i + 1)
        return Runs(starts, counts.astype(np.int64), coefs.astype(np.float32))

    def scores(self, proj: F64) -> F64:
        """(m,) each run's mean cosine to a unit query whose basis projection is ``proj`` (r,)."""
        r = min(self.coefs.shape[1], proj.shape[0])
        return np.asarray(self.coefs[:, :r].astype(np.float64) @ proj[:r], np.float64)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        return int(self.starts.nbytes + self.counts.nbytes + self.coefs.nbytes)


def paint(anchor_score: float, run_scores: F64) -> F64:
    """Run scores shifted so the best run carries the anchor's own score.

    The anchor's rank among anchors is unchanged (its maximum is its score);
    inside it, runs that match the query less sit lower by the difference of
    their mean cosines, so the best-matching run is the answer's extent.
    """
    return np.asarray(anchor_score + run_scores - float(np.max(run_scores)), np.float64)


def pack_runs(runs: Sequence[Runs], cap: int, rank: int) -> dict[str, np.ndarray]:
    """Every anchor's runs as flat arrays under ``runs_*`` keys (coefs zero-padded to ``rank``)."""
    m = [len(r) for r in runs]
    coefs = np.zeros((sum(m), rank), np.float32)
    row = 0
    for r in runs:
        coefs[row : row + len(r), : r.coefs.shape[1]] = r.coefs
        row += len(r)
    return {
        "runs_cap": np.array(cap, np.int64),
        "runs_per_anchor": np.array(m, np.int64),
        "runs_starts": np.concatenate([r.starts for r in runs]) if runs else np.zeros(0),
        "runs_counts": np.concatenate([r.counts for r in runs]) if runs else np.zeros(0, np.int64),
        "runs_coefs": coefs,
    }


def unpack_runs(
    state: Mapping[str, np.ndarray], starts: F64, ends: F64, counts: I64, rows: I64, cap: int
) -> list[Runs]:
    """Inverse of :func:`pack_runs` for anchors with the given spans, member counts and basis rows.

    Raises ValueError when the arrays disagree with the anchors (more than ``cap`` runs, runs
    outside or out of order in their anchor, member counts that do not add up).
    """
    per = np.asarray(state["runs_per_anchor"], np.int64)
    r_starts = np.asarray(state["runs_starts"], np.float64)
    r_counts = np.asarray(state["runs_counts"], np.int64)
    coefs = np.asarray(state["runs_coefs"], np.float32)
    total = int(per.sum()) if per.size else 0
    if per.shape != starts.shape or np.any(per < 1) or np.any(per > cap):
        raise ValueError("runs per anchor out of range")
    if r_starts.shape != (total,) or r_counts.shape != (total,) or coefs.ndim != 2 or coefs.shape[0] != total:
        raise ValueError("run arrays disagree in length")
    if not (np.all(np.isfinite(r_starts)) and np.all(np.isfinite(coefs))) or np.any(r_counts < 1):
        raise ValueError("runs have non-finite values or empty runs")
    out: list[Runs] = []
    lo = 0
    for i, m in enumerate(per):
        hi = lo + int(m)
        s = r_starts[lo:hi]
        if s[0] != starts[i] or np.any(np.diff(s) <= 0) or s[-1] > ends[i]:
            raise ValueError(f"anchor {i}: runs are not ordered inside it")
        if int(r_counts[lo:hi].sum()) != int(counts[i]) or int(rows[i]) > coefs.shape[1]:
            raise ValueError(f"anchor {i}: runs do not match its members or basis")
        out.append(Runs(s.copy(), r_counts[lo:hi].copy(), coefs[lo:hi, : int(rows[i])].copy()))
        lo = hi
    return out
