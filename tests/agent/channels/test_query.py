"""A query is checked once, where it is built: typed errors for every bad field, no 'internal'."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.channels.retrieval import Query
from agent.config import MAX_TOP_K, QueryConfig
from agent.errors import QueryError
from agent.index.video_index import VideoIndex
from streams.file import decode_frames
from tests.agent.index.test_index import ingest, settings
from tests.videos import Scene, make_video, photos

LIMITS = QueryConfig()


@pytest.mark.parametrize(
    "fields",
    [
        {"start": math.nan},
        {"end": math.inf},
        {"start": -math.inf, "end": 3.0},
        {"start": 5.0, "end": 5.0},
        {"top_k": 0},
        {"top_k": MAX_TOP_K + 1},
        {"text": None},
        {"image": np.zeros((4, 4, 3), np.uint8)},
    ],
)
def test_bad_fields_are_query_errors(fields: dict[str, object]) -> None:
    query = Query(**{"text": "a van", **fields})  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        query.check(LIMITS)


def test_an_empty_stream_list_means_every_stream() -> None:
    assert Query(text="a van", streams=[]).streams is None
    assert Query(text="a van", streams=["cam"]).streams == ["cam"]


def test_ranges_outside_what_is_retained_answer_empty_with_a_note(tmp_path: Path) -> None:
    video = tmp_path / "scenes.mp4"
    make_video(video, [(4.0, p) for p in photos(2, offset=40)], fps=10, size=(320, 240))
    idx: VideoIndex = ingest(tmp_path / "idx", video, settings(grid=2, budget=8))
    image = np.zeros((64, 64, 3), np.uint8)
    for start, end in ((-50.0, -10.0), (5000.0, None), (1e12, None)):
        result = idx.query(Query(image=image, start=start, end=end))["cam"]
        assert result.moments == [] and "time range not in retained memory" in result.notes
        assert result.coverage is not None and result.coverage.retained_seconds == 0.0
    idx.close()


def test_one_wide_region_gets_the_whole_refine_budget(tmp_path: Path) -> None:
    # A fixed camera: the random encoder merges the whole clip into one anchor, so there is one
    # region to refine. It must be sampled with the full budget, not a per-candidate share, or
    # the frame a query was taken from is missed (seen on vtest.avi: best at 67.5 s for 30 s).
    import av

    from streams.file import decode_frames
    from tests.videos import VIDEOS

    video = VIDEOS / "vtest.avi"
    cfg = settings(grid=1, budget=4)
    idx = VideoIndex.create(tmp_path / "idx", cfg)
    idx.ingest(decode_frames(video, stream="cam", fps=cfg.index.fps, short_side=idx.prescreen.image_size))
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        query = next(f for f in container.decode(stream) if f.time is not None and f.time >= 30.0)
        t = float(query.time)
        image = query.to_ndarray(format="rgb24")
    assert len(idx.streams["cam"].memory.spans()) >= 1
    best = idx.query(Query(image=image, top_k=3))["cam"].moments[0]
    assert best.start - 1.5 <= t <= best.end + 1.5, (t, best)
    idx.close()


def test_config_paths_are_absolute_whatever_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.service.config import load_serve_file

    root = Path(__file__).resolve().parents[3]
    monkeypatch.chdir(root)
    cfg = load_serve_file(Path("examples/vmr.toml"))  # relative to the cwd, as `vmr serve --config` gets it
    assert cfg.service.index.is_absolute()
    assert all(Path(s.path).is_absolute() for s in cfg.streams if getattr(s, "path", None))


def test_a_repeated_query_is_not_encoded_again() -> None:
    from agent.channels.retrieval import QueryVectors, encode_query
    from agent.config import EncoderConfig
    from agent.models.encoder import load_encoder

    enc = load_encoder(EncoderConfig(model="tiny-random", allow_random=True, threads=1, backend="torch"))
    vectors = QueryVectors(size=2)
    with Image.open(photos(1)[0]) as im:
        picture = np.asarray(im.convert("RGB")).copy()
    van = vectors.get(Query(text="a white van"), enc)
    passes = enc.passes
    again = vectors.get(Query(text="a white van", top_k=3), enc)  # other options, same content
    assert again is van and enc.passes == passes and (vectors.hits, vectors.misses) == (1, 1)
    np.testing.assert_array_equal(van, encode_query(Query(text="a white van"), enc))  # what encoding gives
    assert not van.flags.writeable  # shared: nobody may change it in place
    seen = vectors.get(Query(image=picture), enc)
    assert vectors.get(Query(image=picture.copy()), enc) is seen  # by content, not by object
    other = picture.copy()
    other[0, 0, 0] ^= 1
    assert vectors.get(Query(image=other), enc) is not seen  # one changed byte: encoded again
    assert len(vectors) == 2  # bounded: the least recently used (the text) went first
    passes = enc.passes
    vectors.get(Query(text="a white van"), enc)
    assert enc.passes == passes + 1


def test_an_anchor_merged_across_a_hole_is_proposed_without_it(tmp_path: Path) -> None:
    # Three stretches, two holes, a budget of two tokens: one anchor must span a hole. With no
    # stored frames the answer is anchor-level: it may name the stretches on either side of the
    # hole (the anchor's score is theirs), never the 2 s nobody saw.
    video = tmp_path / "scenes.mp4"
    # Moving scenes: a static one is gated after its first frame, which would open gaps of its own.
    make_video(video, [Scene(4.0, p, True) for p in photos(4, offset=40)], fps=10, size=(320, 240))
    cfg = settings(grid=2, budget=2, gap_seconds=1.5, store_bytes=0)
    idx = VideoIndex.create(tmp_path / "idx", cfg)
    frames = decode_frames(video, stream="cam", fps=cfg.index.fps, short_side=idx.prescreen.image_size)
    idx.ingest(f for f in frames if not (4.0 <= f.t < 6.0 or 10.0 <= f.t < 12.0))
    memory = idx.streams["cam"].memory
    spans = memory.spans()
    holes = [(a[1], b[0]) for a, b in itertools.pairwise(spans)]
    starts, ends, _ = memory.matrix()
    assert len(holes) == 2 and memory.tokens == 2
    assert any(
        s < h[0] and e > h[1] for s, e in zip(starts, ends, strict=True) for h in holes
    )  # merged across
    image = np.asarray(Image.open(photos(4, offset=40)[1]).convert("RGB"))
    result = idx.query(Query(image=image, top_k=5))["cam"]
    assert result.answered_by == "anchor" and len(result.moments) >= 2
    for m in result.moments:
        assert all(m.end <= a or m.start >= b for a, b in holes), (m.start, m.end, holes)
        assert all(m.start <= t <= m.end for t in m.evidence)
    idx.close()


def test_a_vector_encoded_elsewhere_is_kept_and_one_of_another_shape_refused() -> None:
    from agent.channels.retrieval import QueryVectors, encode_query
    from agent.config import EncoderConfig
    from agent.errors import ConfigError
    from agent.models.encoder import load_encoder

    enc = load_encoder(EncoderConfig(model="tiny-random", allow_random=True, threads=1, backend="torch"))
    shipped = encode_query(Query(text="a white van"), enc)  # as another process's encoder gives it
    vectors = QueryVectors()
    vectors.put(Query(text="a white van"), enc, shipped)
    passes = enc.passes
    kept = vectors.get(Query(text="a white van", top_k=2), enc)
    assert enc.passes == passes and (vectors.hits, vectors.misses) == (1, 0)
    np.testing.assert_array_equal(kept, shipped)
    assert not kept.flags.writeable and shipped.flags.writeable  # a read-only copy; the caller's untouched
    with pytest.raises(ConfigError, match="shape"):
        vectors.put(Query(text="a red car"), enc, np.zeros(enc.dim + 1, np.float32))
    assert len(vectors) == 1
