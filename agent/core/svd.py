"""Rank-k truncated SVD of an anchor's member embeddings, kept online.

An anchor never stores its members: it keeps the right singular vectors and
singular values of the stacked member matrix ``X`` (rows = members), plus the
exact member sum. Because ``X^T X = basis^T diag(sigma)^2 basis`` is all a
right-side SVD needs, adding a row (Brand's incremental update) or merging two
anchors only ever factorises a tiny core matrix, never the members.

Arithmetic is float64; stored arrays are float32 (``total`` stays float64 so
the mean is exact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

Representative = Literal["smore", "mean"]
MergeRule = Literal["cosine", "ward", "ward-young", "ward-context", "dilution", "subspace"]
"""Which adjacent pair a full memory merges (see :func:`merge_cost`)."""
MERGE_RULES: tuple[MergeRule, ...] = ("cosine", "ward", "ward-young", "ward-context", "dilution", "subspace")

_RHO_TOL = 1e-5
"""A new row whose residual off the basis is below this fraction of its norm
lies in the span: float32 bases cannot resolve finer directions anyway."""
_SIGMA_TOL = 1e-6
"""Singular values below this fraction of the largest are numerical zeros."""
_REORTH_EVERY = 64
"""Updates between exact re-orthonormalisations (bounds float32 drift)."""


def _truncate(sigma: F64, rows: F64, rank: int) -> tuple[F32, F32]:
    """Keep the top ``rank`` non-negligible components (sigma is descending)."""
    if sigma.size == 0 or sigma[0] <= 0.0:
        return np.zeros(0, np.float32), np.zeros((0, rows.shape[1]), np.float32)
    keep = min(rank, int(np.count_nonzero(sigma > _SIGMA_TOL * sigma[0])))
    return sigma[:keep].astype(np.float32), np.ascontiguousarray(rows[:keep], dtype=np.float32)


def _svd_rows(m: F64, rank: int) -> tuple[F32, F32]:
    """Truncated right-side SVD of a small stacked matrix."""
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    return _truncate(s, vt, rank)


def _as_row(v: npt.ArrayLike, dim: int | None = None) -> F64:
    row = np.asarray(v, dtype=np.float64)
    if row.ndim != 1 or (dim is not None and row.shape[0] != dim):
        raise ValueError(f"expected a vector of length {dim}, got shape {row.shape}")
    if not np.all(np.isfinite(row)):
        raise ValueError("vector has non-finite values")
    return row


@dataclass(eq=False)
class TruncatedSVD:
    """Rank-<=k SVD of the stacked member matrix X (n x d): X ≈ U diag(sigma) basis."""

    basis: F32
    """(r, d) orthonormal rows (right singular vectors), r <= rank."""
    sigma: F32
    """(r,) singular values, descending."""
    count: int
    """Members n folded in."""
    total: F64
    """(d,) exact sum of the members."""
    rank: int
    _since_orth: int = field(default=0, repr=False)

    @classmethod
    def from_vector(cls, v: npt.ArrayLike, rank: int) -> TruncatedSVD:
        """The SVD of a single member."""
        if rank < 1:
            raise ValueError("rank must be >= 1")
        row = _as_row(v)
        norm = float(np.linalg.norm(row))
        if norm == 0.0:
            sigma, basis = np.zeros(0, np.float32), np.zeros((0, row.shape[0]), np.float32)
        else:
            sigma = np.array([norm], np.float32)
            basis = (row / norm).astype(np.float32)[None, :]
        return cls(basis=basis, sigma=sigma, count=1, total=row.copy(), rank=rank)

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.total.shape[0])

    def update(self, v: npt.ArrayLike) -> None:
        """Fold one more member row in place (Brand's rank-one update, then truncate).

        With ``X = U S B`` and a new row ``v = m^T B + rho P`` (``m = B v``,
        ``P`` the unit residual), ``[X; v] = diag(U, 1) K [B; P]`` with the
        core ``K = [[S, 0], [m^T, rho]]``, so the SVD of the (r+1)x(r+1) core
        gives the new right singular vectors. When ``v`` lies in the span
        (``rho`` ~ 0) the residual direction is dropped instead of being
        normalised noise.
        """
        row = _as_row(v, self.dim)
        basis = self.basis.astype(np.float64)
        r = basis.shape[0]
        m = basis @ row
        p = row - basis.T @ m
        # A second Gram-Schmidt pass: the float32 basis is only nearly orthonormal.
        m2 = basis @ p
        p -= basis.T @ m2
        m += m2
        rho = float(np.linalg.norm(p))
        if rho > _RHO_TOL * float(np.linalg.norm(row)):
            core = np.zeros((r + 1, r + 1))
            core[r, r] = rho
            frame = np.vstack([basis, (p / rho)[None, :]])
        else:
            core = np.zeros((r + 1, r))
            frame = basis
        core[np.arange(r), np.arange(r)] = self.sigma
        core[r, :r] = m
        _, s, wt = np.linalg.svd(core, full_matrices=False)
        self.sigma, self.basis = _truncate(s, wt @ frame, self.rank)
        self.count += 1
        # A new array, not ``+=``: ``total`` may be a row of the memory's packed stack (see :meth:`share`).
        self.total = self.total + row
        self._since_orth += 1
        if self._since_orth >= _REORTH_EVERY:
            self.reorthonormalise()

    def share(self, basis: F32, total: F64) -> None:
        """Hold ``basis`` (r, d) and ``total`` (d,), views of the memory's slot, instead of own copies.

        The same numbers (the caller copied them there, :mod:`agent.core.slots`): the anchor's
        arrays then live once, in the stacks the memory scores queries with. This SVD never
        writes them in place (every change assigns new arrays, which the memory copies back
        into the slot); a slot is rewritten only for its own anchor's change or, once released,
        for another anchor, so an SVD kept apart from the memory must :meth:`own` its arrays.
        """
        if basis.shape != self.basis.shape or total.shape != self.total.shape:
            raise ValueError("shared arrays must have the shapes of the anchor's own")
        self.basis, self.total = basis, total

    def own(self) -> None:
        """Hold own copies again (an SVD kept apart from the memory must not read a slot that is reused)."""
        if self.basis.base is not None:
            self.basis = self.basis.copy()
        if self.total.base is not None:
            self.total = self.total.copy()

    def reorthonormalise(self) -> None:
        """Restore exactly orthonormal rows: re-factorise ``diag(sigma) basis``."""
        self.sigma, self.basis = _svd_rows(self.sigma[:, None].astype(np.float64) * self.basis, self.rank)
        self._since_orth = 0

    def merge(self, other: TruncatedSVD) -> TruncatedSVD:
        """SVD of both member sets stacked, truncated to this rank.

        Exact for the retained components: ``vstack(S1 B1, S2 B2)`` has the
        same Gram matrix as the stacked (truncated) members.
        """
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dims {self.dim} and {other.dim}")
        stacked = np.vstack(
            [
                self.sigma[:, None].astype(np.float64) * self.basis,
                other.sigma[:, None].astype(np.float64) * other.basis,
            ]
        )
        if stacked.shape[0] == 0:
            sigma, basis = np.zeros(0, np.float32), np.zeros((0, self.dim), np.float32)
        else:
            sigma, basis = _svd_rows(stacked, self.rank)
        return TruncatedSVD(
            basis=basis,
            sigma=sigma,
            count=self.count + other.count,
            total=self.total + other.total,
            rank=self.rank,
        )

    def mean(self) -> F64:
        """Exact mean of the members."""
        return self.total / max(self.count, 1)

    def representative(self, kind: Representative) -> F32:
        """The anchor's one token: a unit float32 (d,) vector.

        ``"smore"`` averages the principal directions weighted by their
        singular values, each flipped to agree with the mean (singular vectors
        have arbitrary sign, the mean does not); ``"mean"`` is the normalised
        mean. Degenerate anchors (zero mean, opposite members) fall back to
        the other definition, then to the top singular vector.
        """
        mean = self.mean()
        # A mean that is rounding residue of cancelling members has no direction.
        rms = float(np.sqrt(np.sum(self.sigma.astype(np.float64) ** 2) / max(self.count, 1)))
        if kind == "smore":
            vec = self._smore(mean)
            if vec is None:
                vec = _unit(mean, rms)
        elif kind == "mean":
            vec = _unit(mean, rms)
            if vec is None:
                vec = self._smore(mean)
        else:
            raise ValueError(f"unknown representative {kind!r}")
        if vec is None and self.basis.shape[0] > 0:
            vec = self.basis[0].astype(np.float64)
        if vec is None:
            raise ValueError("anchor has no direction (all members are zero)")
        return vec.astype(np.float32)

    def _smore(self, mean: F64) -> F64 | None:
        if self.basis.shape[0] == 0:
            return None
        basis = self.basis.astype(np.float64)
        signs = np.where(basis @ mean < 0.0, -1.0, 1.0)
        return _unit((self.sigma.astype(np.float64) * signs) @ basis)

    def gram(self) -> F64:
        """``basis^T diag(sigma^2) basis``, i.e. ``X^T X`` of the retained components."""
        b = self.basis.astype(np.float64)
        return (b.T * self.sigma.astype(np.float64) ** 2) @ b

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        return int(self.basis.nbytes + self.sigma.nbytes + self.total.nbytes)


def _unit(v: F64, scale: float = 0.0) -> F64 | None:
    """``v`` normalised, or None when it is zero or negligible next to ``scale``."""
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or norm <= 1e-9 * scale:
        return None
    return v / norm


def pack_svds(svds: Sequence[TruncatedSVD], rank: int, dim: int) -> dict[str, np.ndarray]:
    """Stack SVDs into flat arrays, bases and sigmas zero-padded to ``rank`` rows."""
    n = len(svds)
    out: dict[str, np.ndarray] = {
        "basis": np.zeros((n, rank, dim), np.float32),
        "sigma": np.zeros((n, rank), np.float32),
        "rows": np.zeros(n, np.int64),
        "counts": np.zeros(n, np.int64),
        "totals": np.zeros((n, dim), np.float64),
    }
    for i, svd in enumerate(svds):
        r = svd.basis.shape[0]
        out["basis"][i, :r], out["sigma"][i, :r], out["rows"][i] = svd.basis, svd.sigma, r
        out["counts"][i], out["totals"][i] = svd.count, svd.total
    return out


def unpack_svds(arrays: Mapping[str, np.ndarray], n: int, rank: int, dim: int) -> list[TruncatedSVD]:
    """Inverse of :func:`pack_svds`; ValueError when shapes or values are inconsistent."""
    shapes = {"basis": (n, rank, dim), "sigma": (n, rank), "rows": (n,), "counts": (n,), "totals": (n, dim)}
    got = {key: np.asarray(arrays[key]) for key in shapes}
    for key, shape in shapes.items():
        if got[key].shape != shape or not np.issubdtype(got[key].dtype, np.number):
            raise ValueError(f"{key} has shape {got[key].shape}, expected {shape}")
        if not np.all(np.isfinite(got[key])):
            raise ValueError(f"{key} has non-finite values")
    rows, counts = got["rows"].astype(np.int64), got["counts"].astype(np.int64)
    if np.any(rows < 0) or np.any(rows > rank) or np.any(counts < 1):
        raise ValueError("SVD row count or member count out of range")
    return [
        TruncatedSVD(
            basis=got["basis"][i, : rows[i]].astype(np.float32),
            sigma=got["sigma"][i, : rows[i]].astype(np.float32),
            count=int(counts[i]),
            total=got["totals"][i].astype(np.float64),
            rank=rank,
        )
        for i in range(n)
    ]


def merge_cost(
    a: TruncatedSVD, b: TruncatedSVD, rule: MergeRule, floor_a: float = 1.0, floor_b: float = 1.0
) -> float:
    """What merging ``a`` and ``b`` costs under ``rule`` (lower merges first; O(d) or O(d*k^2)).

    * ``"ward"``: the increase of the members' squared error around their
      anchor's mean, ``n_a n_b / (n_a + n_b) * |mean_a - mean_b|^2`` (Ward's
      criterion). A short anchor far from its neighbours costs its length times
      its squared distance, so distinct stretches survive while long,
      near-identical ones pool (``"ward-context"`` is Ward's cost here; the
      chain lowers it for a short mix of its neighbours, :func:`agent.core.anchors.fold_cost`);
      ``floor_a`` / ``floor_b`` price a side at least at that many members;
    * ``"ward-young"``: Ward's cost with an anchor begun within the last ``m``
      members priced at least at ``m`` members, ``m`` the memory's members per
      token (the chain passes the floors; here, as given). Online, plain Ward
      folds every new frame into the newest anchor once the memory is
      compressed enough (a new frame's cost is ``|x - mean|^2`` whatever the
      anchor's size, a settled pair's ``n/2 |d|^2``): the newest footage pooled
      into one anchor of 10-22 minutes on the haystack at 1/30, where this
      rule keeps it at the resolution of the rest (:mod:`agent.core.anchors`);
    * ``"dilution"``: the largest squared shift any member's anchor mean
      suffers, ``(max(n_a, n_b) / (n_a + n_b))^2 * |mean_a - mean_b|^2``: the
      worst member's share of Ward's sum, not the sum. The shorter side moves
      most (its contrast to a query is diluted by ``n_big / n``), so a short
      distinct anchor is as dear to merge as a long one. Ward's sum is
      ``min(n_a, n_b) * n / max(n_a, n_b)`` times this (one to two shorter
      sides' worth): the factor that folds short needles before long stretches;
    * ``"subspace"``: the energy of the members that the merged rank-k
      subspace no longer holds, i.e. the discarded squared singular values of
      ``vstack(S_a B_a, S_b B_b)`` (exact for the retained components);
    * ``"cosine"``: ``1 -`` the cosine of the two means (the size-blind rule
      of SMORE; the memory itself keys it on the representatives).
    """
    if rule in ("ward", "ward-context", "ward-young"):
        diff = a.mean() - b.mean()
        na, nb = max(a.count, floor_a), max(b.count, floor_b)
        return float(na * nb / (na + nb) * (diff @ diff))
    if rule == "dilution":
        diff = a.mean() - b.mean()
        share = max(a.count, b.count) / (a.count + b.count)
        return float(share * share * (diff @ diff))
    if rule == "subspace":
        sa, sb = a.sigma.astype(np.float64), b.sigma.astype(np.float64)
        stacked = np.vstack([sa[:, None] * a.basis, sb[:, None] * b.basis])
        if stacked.shape[0] <= a.rank:
            return 0.0
        s = np.linalg.svd(stacked, compute_uv=False)
        return float(np.sum(s[a.rank :] ** 2))
    if rule == "cosine":
        ma, mb = a.mean(), b.mean()
        den = float(np.linalg.norm(ma) * np.linalg.norm(mb))
        return 1.0 - (float(ma @ mb) / den if den > 0 else 0.0)
    raise ValueError(f"unknown merge rule {rule!r}")


def batch_svd(x: npt.ArrayLike, rank: int) -> TruncatedSVD:
    """Reference: the truncated SVD of the whole stack at once (``np.linalg.svd``)."""
    if rank < 1:
        raise ValueError("rank must be >= 1")
    mat = np.asarray(x, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix, got shape {mat.shape}")
    sigma, basis = _svd_rows(mat, rank)
    return TruncatedSVD(basis=basis, sigma=sigma, count=int(mat.shape[0]), total=mat.sum(axis=0), rank=rank)
