"""Image queries scored at the index's grid: the photo tiled as a still shot meets the anchors' layout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from agent.channels.retrieval import PRESCREEN, REFINE, Query, QueryVectors, encode_query, query_roles
from agent.config import EncoderConfig, IndexConfig, QueryConfig, Settings
from agent.core.superimage import still_shot
from agent.errors import QueryError
from agent.index.video_index import VideoIndex
from agent.models.encoder import Encoder, load_encoder
from streams.file import decode_frames
from tests.videos import Scene, make_video, photos

TINY = EncoderConfig(model="tiny-random", allow_random=True, threads=1, backend="torch")
HOG = EncoderConfig(model="classical-hog")


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return load_encoder(TINY)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    with Image.open(photos(1)[0]) as im:
        return np.asarray(im.convert("RGB")).copy()


def test_an_image_at_grid_2_is_encoded_as_its_still_shot(tiny: Encoder, picture: np.ndarray) -> None:
    query = Query(image=picture)
    tiled = encode_query(query, tiny, grid=2)
    np.testing.assert_array_equal(tiled, tiny.encode_images([still_shot(picture, 2, tiny.image_size)])[0])
    alone = encode_query(query, tiny)  # grid 1: the photo itself
    np.testing.assert_array_equal(alone, tiny.encode_images([picture])[0])
    assert not np.allclose(tiled, alone)  # another encoder input, another vector
    text = Query(text="a white van")
    np.testing.assert_array_equal(encode_query(text, tiny, grid=2), encode_query(text, tiny))


def test_query_vectors_key_images_by_grid_and_text_once(tiny: Encoder, picture: np.ndarray) -> None:
    vectors = QueryVectors()
    one, two = vectors.get(Query(image=picture), tiny), vectors.get(Query(image=picture), tiny, grid=2)
    assert (vectors.misses, vectors.hits, len(vectors)) == (2, 0, 2) and not np.allclose(one, two)
    assert vectors.get(Query(image=picture.copy()), tiny, grid=2) is two
    van = vectors.get(Query(text="a white van"), tiny)
    assert vectors.get(Query(text="a white van"), tiny, grid=2) is van  # text has no layout: one vector
    assert (vectors.misses, vectors.hits, len(vectors)) == (3, 2, 3)
    # A vector put at a grid is found at that grid only.
    other = picture.copy()
    other[0, 0, 0] ^= 1
    shipped = encode_query(Query(image=other), tiny, grid=2)
    vectors.put(Query(image=other), tiny, shipped, grid=2)
    passes = tiny.passes
    np.testing.assert_array_equal(vectors.get(Query(image=other), tiny, grid=2), shipped)
    assert tiny.passes == passes
    vectors.get(Query(image=other), tiny)
    assert tiny.passes == passes + 1


def test_roles_tile_the_prescreen_and_refine_with_the_photo_alone(tiny: Encoder, picture: np.ndarray) -> None:
    vectors = QueryVectors()
    roles = query_roles(Query(image=picture), vectors, tiny, tiny, grid=2)
    assert set(roles) == {PRESCREEN, REFINE}
    np.testing.assert_array_equal(roles[PRESCREEN], encode_query(Query(image=picture), tiny, grid=2))
    np.testing.assert_array_equal(roles[REFINE], encode_query(Query(image=picture), tiny))
    assert set(query_roles(Query(image=picture), vectors, tiny, tiny, grid=1)) == {PRESCREEN}  # as before
    assert set(query_roles(Query(text="a white van"), vectors, tiny, tiny, grid=2)) == {PRESCREEN}


def test_settings_give_the_query_grid() -> None:
    idx = IndexConfig(grid=2)
    assert Settings(index=idx).query_grid == 2  # still-shot is the default
    assert Settings(index=idx, query=QueryConfig(image_query="photo")).query_grid == 1
    assert Settings(index=IndexConfig(grid=1)).query_grid == 1
    # A settings file (index.json, [settings.query]) written before the field loads with the default.
    old = Settings.model_validate({"index": {"grid": 3}, "query": {"top_k": 4}})
    assert old.query.image_query == "still-shot" and old.query_grid == 3


NEEDLE = 3
"""The needle photo's scene: [4 * NEEDLE, 4 * NEEDLE + 4) s of :func:`_scenes`."""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Six 4-s photo scenes (a sliding square keeps each moving), and the needle photo."""
    pics = photos(6, offset=40)
    video = tmp_path_factory.mktemp("vid") / "scenes.mp4"
    make_video(video, [Scene(4.0, p, True) for p in pics], fps=10, size=(320, 240))
    with Image.open(pics[NEEDLE]) as im:
        return video, np.asarray(im.convert("RGB")).copy()


def _anchor_scores(
    root: Path, video: Path, photo: np.ndarray, mode: Literal["still-shot", "photo"]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(anchor starts, prescreen scores, refined top moment) of ``photo`` on a grid-2 index of ``video``."""
    cfg = Settings(
        prescreen=HOG, index=IndexConfig(fps=2.0, grid=2, budget=64), query=QueryConfig(image_query=mode)
    )
    idx = VideoIndex.create(root, cfg)
    try:
        idx.ingest(decode_frames(video, stream="cam", fps=2.0, short_side=idx.prescreen.image_size))
        pending = idx.start_query(Query(image=photo, top_k=3))
        # The first answer encodes the prescreen vector only; the photo alone (still-shot mode)
        # is encoded when refinement starts.
        assert idx.query_vectors.misses == 1
        memory = idx.streams["cam"].memory
        starts, _ = memory.times()
        scores = memory.scores(pending.query.vectors[PRESCREEN])
        top = pending.refine(None)["cam"].moments[0]
        assert idx.query_vectors.misses == (2 if mode == "still-shot" else 1)
        assert pending.query.vectors[REFINE].shape == (idx.refine.dim,)
        return starts, scores, (top.start, top.end, top.score)
    finally:
        idx.close()


def test_a_still_shot_query_singles_out_its_scene_more_clearly(
    tmp_path: Path, scenes: tuple[Path, np.ndarray]
) -> None:
    video, photo = scenes
    gaps, tops = {}, {}
    for mode in ("still-shot", "photo"):
        starts, scores, tops[mode] = _anchor_scores(tmp_path / mode, video, photo, mode)  # type: ignore[arg-type]
        needle = (starts >= 4.0 * NEEDLE) & (starts < 4.0 * NEEDLE + 4.0)
        assert needle.any() and (~needle).any()
        order = np.argsort(-scores, kind="stable")
        assert needle[order[0]], (mode, starts[order], scores[order])  # the top anchor is the needle's
        gaps[mode] = float(scores[needle].max() - scores[~needle].max())
    # On this clip the photo alone finds the scene too (classical-hog tells these photos apart),
    # but by a thin margin: tiled, the needle's anchor stands out several times further (0.60 vs
    # 0.13 when written).
    assert gaps["still-shot"] > 2.0 * gaps["photo"] > 0, gaps
    # Refinement scores stored frames with the photo alone in both modes: the same best moment.
    assert tops["still-shot"] == tops["photo"]
    start, end, _ = tops["still-shot"]
    assert 4.0 * NEEDLE - 0.5 <= start < end <= 4.0 * NEEDLE + 4.5, tops


def test_first_vectors_leave_the_refine_vector_for_refinement(tiny: Encoder, picture: np.ndarray) -> None:
    from agent.channels.query import first_vectors

    vectors = QueryVectors()
    image = Query(image=picture)
    pvec, later = first_vectors(image, vectors, tiny, tiny, grid=2)
    assert vectors.misses == 1 and later is not None
    np.testing.assert_array_equal(pvec, encode_query(image, tiny, 2))
    np.testing.assert_array_equal(later(), encode_query(image, tiny, 1))
    assert vectors.misses == 2
    # Text, or an image at grid 1 with one model: the prescreen vector serves refinement too.
    assert first_vectors(Query(text="a dog"), vectors, tiny, tiny, grid=2)[1] is None
    assert first_vectors(image, vectors, tiny, tiny, grid=1)[1] is None


@pytest.mark.parametrize("grid", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 10000, 3), (10000, 1, 3), (3, 5, 3)])
def test_odd_but_valid_pictures_tile_into_one_encoder_input(
    tiny: Encoder, shape: tuple[int, ...], grid: int
) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert still_shot(img, grid, tiny.image_size).shape == (tiny.image_size, tiny.image_size, 3)
    vec = encode_query(Query(image=img), tiny, grid)
    assert vec.shape == (tiny.dim,) and np.isclose(np.linalg.norm(vec), 1.0)


@pytest.mark.parametrize(
    "img",
    [
        np.zeros((50, 60), np.uint8),  # grayscale
        np.zeros((50, 60, 4), np.uint8),  # RGBA
        np.zeros((40, 40, 3), np.float64),  # not 8-bit
        np.zeros((0, 40, 3), np.uint8),  # empty
    ],
    ids=["gray", "rgba", "float", "empty"],
)
def test_a_query_picture_that_is_not_8_bit_rgb_is_a_query_error_before_encoding(img: np.ndarray) -> None:
    # Pictures off the wire are decoded to RGB (agent.models.images); one built in Python is
    # refused before any encoding, as a QueryError, rather than failing (grid 1) or tiling into a
    # broadcast error (grid > 1) or into zeros (a float picture cast to uint8) later.
    with pytest.raises(QueryError, match="RGB"):
        Query(image=img).check(QueryConfig())
