"""The online truncated SVD against numpy's batch SVD of the same members."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.scoring import score_anchors
from agent.core.svd import TruncatedSVD, batch_svd, merge_cost, pack_svds, unpack_svds

FAST = settings(max_examples=50, deadline=None)


def incremental(x: np.ndarray, rank: int) -> TruncatedSVD:
    svd = TruncatedSVD.from_vector(x[0], rank)
    for row in x[1:]:
        svd.update(row)
    return svd


def projector(svd: TruncatedSVD) -> np.ndarray:
    b = svd.basis.astype(np.float64)
    return b.T @ b


def low_rank(rng: np.random.Generator, n: int, d: int, k: int, noise: float = 0.0) -> np.ndarray:
    # Distinct singular values keep the subspace comparison well posed.
    scales = np.geomspace(4.0, 1.0, k)
    x = (rng.standard_normal((n, k)) * scales) @ np.linalg.qr(rng.standard_normal((d, k)))[0].T
    return x + noise * rng.standard_normal((n, d))


def assert_orthonormal(svd: TruncatedSVD, tol: float = 1e-5) -> None:
    b = svd.basis.astype(np.float64)
    np.testing.assert_allclose(b @ b.T, np.eye(b.shape[0]), atol=tol)


@FAST
@given(seed=st.integers(0, 2**32 - 1), rank=st.integers(1, 6), d=st.integers(2, 24), data=st.data())
def test_untruncated_incremental_equals_batch(seed: int, rank: int, d: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, rank))
    x = np.random.default_rng(seed).standard_normal((n, d))
    inc, ref = incremental(x, rank), batch_svd(x, rank)
    scale = float(np.abs(x.T @ x).max())
    np.testing.assert_allclose(inc.gram(), x.T @ x, atol=1e-5 * scale)
    np.testing.assert_allclose(inc.sigma, ref.sigma, rtol=1e-4, atol=1e-6 * scale)
    assert inc.count == n
    np.testing.assert_allclose(inc.mean(), x.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert_orthonormal(inc)


@FAST
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), n=st.integers(5, 60), d=st.integers(4, 32))
def test_data_of_rank_at_most_k_is_exact_despite_many_rows(seed: int, k: int, n: int, d: int) -> None:
    x = low_rank(np.random.default_rng(seed), n, d, min(k, d))
    inc, ref = incremental(x, k), batch_svd(x, k)
    assert inc.basis.shape[0] == ref.basis.shape[0] == min(k, d, n)
    np.testing.assert_allclose(inc.sigma, ref.sigma, rtol=1e-4)
    np.testing.assert_allclose(projector(inc), projector(ref), atol=1e-4)
    np.testing.assert_allclose(inc.gram(), x.T @ x, atol=1e-4 * float(np.abs(x.T @ x).max()))


@pytest.mark.parametrize("seed", range(4))
def test_truncated_low_rank_plus_noise_is_close_to_batch(seed: int) -> None:
    k, n, d = 4, 400, 64
    x = low_rank(np.random.default_rng(seed), n, d, k, noise=0.01)
    inc, ref = incremental(x, k), batch_svd(x, k)
    assert inc.basis.shape == ref.basis.shape == (k, d)
    np.testing.assert_allclose(inc.sigma, ref.sigma, rtol=1e-3)
    # Subspace agreement: spectral norm of the projector difference = sin of the largest angle.
    assert np.linalg.norm(projector(inc) - projector(ref), 2) < 1e-2
    assert inc.count == n
    np.testing.assert_allclose(inc.mean(), x.mean(axis=0), atol=1e-12)


def test_rows_in_the_span_do_not_add_noise_directions() -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal(32)
    svd = TruncatedSVD.from_vector(v, 4)
    for _ in range(999):
        svd.update(v)
    assert svd.basis.shape == (1, 32)
    np.testing.assert_allclose(svd.sigma[0], np.sqrt(1000) * np.linalg.norm(v), rtol=1e-5)
    np.testing.assert_allclose(np.abs(svd.basis[0] @ v) / np.linalg.norm(v), 1.0, rtol=1e-6)
    # Two directions mixed repeatedly: rank 2 exactly, never a third noise direction.
    w = rng.standard_normal(32)
    for i in range(200):
        svd.update(v * np.cos(i) + w * np.sin(i))
    assert svd.basis.shape[0] == 2
    assert_orthonormal(svd)


def test_basis_stays_orthonormal_over_many_updates() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    svd = incremental(x, 4)
    assert svd.basis.dtype == np.float32 and svd.sigma.dtype == np.float32
    assert_orthonormal(svd)
    assert np.all(np.diff(svd.sigma) <= 0)
    # Truncation keeps a subset of the energy, never invents some.
    assert float(np.sum(svd.sigma.astype(np.float64) ** 2)) <= float(np.sum(x.astype(np.float64) ** 2)) + 1e-3


@FAST
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), d=st.integers(3, 20), data=st.data())
def test_merge_equals_batch_of_union(seed: int, k: int, d: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 40))
    split = data.draw(st.integers(1, n - 1))
    x = low_rank(np.random.default_rng(seed), n, d, min(k, d))
    merged = incremental(x[:split], k).merge(batch_svd(x[split:], k))
    ref = batch_svd(x, k)
    assert merged.count == n
    np.testing.assert_allclose(merged.total, x.sum(axis=0), atol=1e-9)
    np.testing.assert_allclose(merged.sigma, ref.sigma, rtol=1e-4)
    np.testing.assert_allclose(projector(merged), projector(ref), atol=1e-4)


def test_merge_with_truncation_is_close_to_batch() -> None:
    x = low_rank(np.random.default_rng(3), 300, 40, 3, noise=0.01)
    merged = incremental(x[:120], 3).merge(incremental(x[120:], 3))
    ref = batch_svd(x, 3)
    np.testing.assert_allclose(merged.sigma, ref.sigma, rtol=1e-3)
    assert np.linalg.norm(projector(merged) - projector(ref), 2) < 1e-2


def test_representatives_are_unit_and_point_with_the_mean() -> None:
    rng = np.random.default_rng(4)
    centre = rng.standard_normal(16)
    x = centre + 0.3 * rng.standard_normal((50, 16))
    svd = incremental(x, 3)
    mean = x.mean(axis=0)
    for kind in ("smore", "mean"):
        rep = svd.representative(kind)  # type: ignore[arg-type]
        assert rep.dtype == np.float32 and rep.shape == (16,)
        np.testing.assert_allclose(np.linalg.norm(rep), 1.0, rtol=1e-6)
        assert float(rep @ mean) > 0.9 * np.linalg.norm(mean)
    np.testing.assert_allclose(svd.representative("mean"), mean / np.linalg.norm(mean), rtol=1e-5)
    # SMORE weights components by sigma, each sign-aligned with the mean.
    b, s = svd.basis.astype(np.float64), svd.sigma.astype(np.float64)
    expected = (s * np.sign(b @ mean)) @ b
    np.testing.assert_allclose(svd.representative("smore"), expected / np.linalg.norm(expected), atol=1e-6)


def test_representative_of_a_single_member_is_the_member_direction() -> None:
    v = np.array([0.0, -3.0, 4.0])
    svd = TruncatedSVD.from_vector(v, 2)
    for kind in ("smore", "mean"):
        np.testing.assert_allclose(svd.representative(kind), v / 5.0, rtol=1e-6)  # type: ignore[arg-type]


def test_cancelling_members_fall_back_to_a_principal_direction() -> None:
    v = np.array([1.0, 2.0, 2.0])
    svd = TruncatedSVD.from_vector(v, 2)
    svd.update(-v)
    rep = svd.representative("mean")
    np.testing.assert_allclose(np.abs(rep), np.abs(v) / 3.0, rtol=1e-6)


def test_zero_member_has_no_direction() -> None:
    svd = TruncatedSVD.from_vector(np.zeros(4), 2)
    assert svd.basis.shape == (0, 4) and svd.sigma.shape == (0,)
    with pytest.raises(ValueError, match="no direction"):
        svd.representative("smore")
    svd.update(np.array([0.0, 0.0, 2.0, 0.0]))
    np.testing.assert_allclose(svd.representative("smore"), [0, 0, 1, 0])


def test_bad_rows_are_rejected() -> None:
    svd = TruncatedSVD.from_vector(np.ones(4), 2)
    with pytest.raises(ValueError):
        svd.update(np.ones(5))
    with pytest.raises(ValueError):
        svd.update(np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError):
        svd.merge(TruncatedSVD.from_vector(np.ones(3), 2))
    with pytest.raises(ValueError):
        batch_svd(np.zeros((0, 4)), 2)
    assert svd.count == 1


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(5)
    svds = [incremental(rng.standard_normal((n, 8)), 3) for n in (1, 2, 7)]
    arrays = pack_svds(svds, 3, 8)
    assert arrays["basis"].shape == (3, 3, 8)
    back = unpack_svds(arrays, 3, 3, 8)
    for a, b in zip(svds, back, strict=True):
        np.testing.assert_array_equal(a.basis, b.basis)
        np.testing.assert_array_equal(a.sigma, b.sigma)
        np.testing.assert_array_equal(a.total, b.total)
        assert a.count == b.count
    arrays["rows"][0] = 9
    with pytest.raises(ValueError):
        unpack_svds(arrays, 3, 3, 8)


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)) + 2.0 * rng.standard_normal(d)  # a shared component, like CLIP
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scores_of(svds: list[TruncatedSVD], q: np.ndarray, kind: str) -> np.ndarray:
    rank = svds[0].rank
    p = pack_svds(svds, rank, q.shape[0])
    return score_anchors(q, p["basis"], p["sigma"], p["totals"] / p["counts"][:, None], p["counts"], kind)  # type: ignore[arg-type]


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), d=st.integers(3, 16))
def test_svd_scorers_equal_member_statistics_when_nothing_is_truncated(seed: int, n: int, d: int) -> None:
    # rank >= members: the SVD keeps X^T X exactly, so the scorers are statistics of the members' cosines.
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n, d)
    q = unit_rows(rng, 1, d)[0]
    svd = incremental(x, rank=n)
    cos = x @ q
    assert scores_of([svd], q, "energy")[0] == pytest.approx(np.sqrt(np.mean(cos**2)), abs=1e-5)
    # The spread is the square root of a difference of float32-rounded moments: ~sqrt(eps) precise.
    assert scores_of([svd], q, "peak")[0] == pytest.approx(cos.mean() + cos.std(), abs=2e-3)
    # The best direction of the span is at least as close as the best member.
    assert scores_of([svd], q, "projection")[0] >= cos.max() - 1e-5
    assert scores_of([svd], q, "average")[0] == pytest.approx(cos.mean(), abs=1e-9)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), d=st.integers(3, 16))
def test_the_average_scorer_is_exact_however_much_the_svd_truncates(seed: int, n: int, d: int) -> None:
    # It reads the exact member sum, not the basis: rank 1 over up to 40 members loses nothing.
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n, d)
    q = unit_rows(rng, 1, d)[0]
    assert scores_of([incremental(x, rank=1)], q, "average")[0] == pytest.approx(
        float(np.mean(x @ q)), abs=1e-9
    )


@FAST
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(3, 16))
def test_single_member_anchors_score_their_cosine_under_every_scorer(seed: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    v, q = unit_rows(rng, 2, d)
    svd = TruncatedSVD.from_vector(v, 4)
    for kind in ("energy", "peak", "projection", "average"):
        want = v @ q if kind in ("peak", "average") else abs(v @ q)  # energy and projection drop the sign
        assert scores_of([svd], q, kind)[0] == pytest.approx(want, abs=1e-5)


def test_a_short_matching_stretch_lifts_its_anchor_under_peak_and_energy() -> None:
    # A needle (2 of 20 members) inside a long anchor, against a homogeneous anchor that is
    # moderately close to the query: the mean ranks the homogeneous one first; mean + spread
    # (peak) and the RMS cosine (energy) rank the anchor holding the needle first.
    e = np.eye(8)
    needle = e[0]
    mixed = np.vstack([np.repeat(e[1][None], 18, 0), np.repeat(needle[None], 2, 0)])
    plain = np.repeat((0.2 * e[0] + np.sqrt(1 - 0.04) * e[2])[None], 20, 0)
    svds = [incremental(mixed, 4), incremental(plain, 4)]
    means = np.stack([s.mean() / np.linalg.norm(s.mean()) for s in svds])
    assert np.argmax(means @ needle) == 1
    assert np.argmax(scores_of(svds, needle, "energy")) == 0
    assert np.argmax(scores_of(svds, needle, "peak")) == 0


@FAST
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(1, 5), nb=st.integers(1, 5), d=st.integers(2, 12))
def test_ward_cost_is_the_squared_error_the_merge_adds(seed: int, na: int, nb: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    xa, xb = unit_rows(rng, na, d), unit_rows(rng, nb, d)

    def sse(x: np.ndarray) -> float:
        return float(np.sum((x - x.mean(axis=0)) ** 2))

    added = sse(np.vstack([xa, xb])) - sse(xa) - sse(xb)
    assert merge_cost(incremental(xa, 2), incremental(xb, 2), "ward") == pytest.approx(added, abs=1e-6)


@FAST
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(1, 6), nb=st.integers(1, 6), d=st.integers(2, 12))
def test_dilution_cost_is_the_largest_shift_of_a_members_anchor_mean(
    seed: int, na: int, nb: int, d: int
) -> None:
    rng = np.random.default_rng(seed)
    xa, xb = unit_rows(rng, na, d), unit_rows(rng, nb, d)
    merged = np.vstack([xa, xb]).mean(axis=0)
    shift = max(float(np.sum((merged - x.mean(axis=0)) ** 2)) for x in (xa, xb))
    a, b = incremental(xa, 2), incremental(xb, 2)
    assert merge_cost(a, b, "dilution") == pytest.approx(shift, abs=1e-9)
    # Ward sums the squared shifts over the members: min(na, nb) * n / max(na, nb) times the
    # worst one's (between one and two shorter sides' worth), the factor that folds needles.
    factor = min(na, nb) * (na + nb) / max(na, nb)
    assert merge_cost(a, b, "ward") == pytest.approx(factor * shift, rel=1e-6, abs=1e-12)


@FAST
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), d=st.integers(4, 12))
def test_subspace_cost_is_the_energy_the_merged_rank_k_span_drops(seed: int, k: int, d: int) -> None:
    # Each side has <= k members (kept exactly), so the stack is the batch of all members.
    rng = np.random.default_rng(seed)
    xa, xb = unit_rows(rng, k, d), unit_rows(rng, k, d)
    s = np.linalg.svd(np.vstack([xa, xb]), compute_uv=False)
    cost = merge_cost(incremental(xa, k), incremental(xb, k), "subspace")
    assert cost == pytest.approx(float(np.sum(s[k:] ** 2)), abs=1e-5)
    assert cost >= 0.0


def test_cosine_cost_orders_like_the_cosine_of_the_means() -> None:
    e = np.eye(4)
    a, near, far = (TruncatedSVD.from_vector(v, 2) for v in (e[0], e[0] + 0.1 * e[1], e[1]))
    assert merge_cost(a, near, "cosine") < merge_cost(a, far, "cosine")
    with pytest.raises(ValueError):
        merge_cost(a, near, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        scores_of([a], e[0], "median")


@pytest.mark.parametrize("n", [0, 1, 255, 256, 600])
def test_scores_are_the_whole_stack_float64_product_bit_for_bit(n: int) -> None:
    """The block-wise projection changes no score (ranks and ties stay what they were)."""
    rng = np.random.default_rng(n)
    k, d = 4, 32
    basis = rng.standard_normal((n, k, d)).astype(np.float32)
    sigma = rng.random((n, k)).astype(np.float32)
    means = rng.standard_normal((n, d))
    counts = rng.integers(1, 9, n)
    q = unit_rows(rng, 1, d)[0]
    proj = basis.astype(np.float64) @ q  # what every scorer read before
    second = np.sum((sigma.astype(np.float64) * proj) ** 2, axis=1) / counts
    np.testing.assert_array_equal(
        score_anchors(q, basis, sigma, means, counts, "projection"), np.sqrt(np.sum(proj**2, axis=1))
    )
    np.testing.assert_array_equal(score_anchors(q, basis, sigma, means, counts, "energy"), np.sqrt(second))
