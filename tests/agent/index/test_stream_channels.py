"""A stream with a second channel beside the visual one: fan-out, save/restore, search, work routing.

The second channel lives in this module only and needs no edit of the stream
state: it counts the media it sees, keeps its count in its own folder, and
answers every query with no proposals. The visual channel's answer must not
change because it is there.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.channels.base import AudioMedia, Channel, ChannelAnswer, ChannelQuery, WorkItem
from agent.channels.visual import images_of
from agent.config import EncoderConfig, IndexConfig, QueryConfig, Settings
from agent.errors import ConfigError, IndexStoreError
from agent.index.answers import answer
from agent.index.stream_state import StreamState
from agent.index.video_index import VideoIndex
from agent.models.encoder import ClipEncoder, load_encoder
from agent.store.atomic import write_json
from agent.types import AudioChunk, Frame

TINY = EncoderConfig(model="tiny-random", allow_random=True, threads=1)


class CountingChannel(Channel):
    """Counts frames and audio chunks; saves and restores the counts; never proposes a moment."""

    name = "count"

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.chunks = 0
        self.last_t: float | None = None
        self.closed = 0

    def push(self, frame: Frame) -> list[WorkItem]:
        self.frames += 1
        self._seen(frame.t)
        return []

    def push_audio(self, chunk: AudioMedia) -> list[WorkItem]:
        self.chunks += 1
        self._seen(chunk.t)
        return []

    def _seen(self, t: float) -> None:
        self.last_t = t if self.last_t is None else max(self.last_t, t)

    def flush(self) -> list[WorkItem]:
        return []

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        raise KeyError("the counting channel hands out no work")

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        raise KeyError("the counting channel hands out no work")

    @property
    def in_flight(self) -> int:
        return 0

    def search(self, query: ChannelQuery) -> ChannelAnswer:
        return ChannelAnswer([], {}, notes=[f"counted {self.frames} frames"])

    def resume_time(self) -> float | None:
        return self.last_t

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        body = {"version": 1, "frames": self.frames, "chunks": self.chunks, "last_t": self.last_t}
        write_json(folder / "count.json", body)

    def restore(self, folder: Path) -> None:
        path = folder / "count.json"
        if path.exists():
            data = json.loads(path.read_text())
            self.frames, self.chunks, self.last_t = data["frames"], data["chunks"], data["last_t"]

    def close(self) -> None:
        self.closed += 1


class TapChannel(CountingChannel):
    """Hands every frame to the batch worker ``worker`` and keeps what comes back."""

    name = "tap"

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker
        self.results: list[np.ndarray] = []
        self._waiting: set[int] = set()

    def push(self, frame: Frame) -> list[WorkItem]:
        super().push(frame)
        item = WorkItem(frame.stream, self.name, self.worker, frame.image, None, frame.t, frame.t)
        self._waiting.add(item.id)
        return [item]

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        self._waiting.remove(item.id)
        self.results.append(result)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)


def solid(k: int) -> np.ndarray:
    return np.full((48, 64, 3), (k * 37 % 255, k * 11 % 255, 90), np.uint8)


@pytest.fixture(scope="module")
def enc() -> ClipEncoder:
    return load_encoder(TINY)


def cfg() -> IndexConfig:
    return IndexConfig(fps=2.0, grid=1, gate=False, store_bytes=1 << 22)


def open_state(root: Path, enc: ClipEncoder, *more: Channel) -> StreamState:
    return StreamState(root, "cam", cfg(), dim=enc.dim, image_size=enc.image_size, refine=enc, channels=more)


def feed(state: StreamState, enc: ClipEncoder, frames: list[Frame]) -> None:
    """Push frames and commit their work inline, as the CLI does."""
    for f in frames:
        items = state.push(f)
        for item, v in zip(items, enc.encode_images(images_of(items)) if items else [], strict=True):
            state.commit(item, v)
    flushed = state.flush()
    for item, v in zip(flushed, enc.encode_images(images_of(flushed)) if flushed else [], strict=True):
        state.commit(item, v)


def visual_found(state: StreamState, q: np.ndarray) -> list[tuple[float, float, float, str]]:
    found = state.search(ChannelQuery({"prescreen": q, "refine": q}, top_k=3, cfg=QueryConfig()))
    return [(p.start, p.end, p.score, p.kind) for p in found["visual"].proposals]


FRAMES = [Frame("cam", k * 0.5, solid(k // 6)) for k in range(36)]  # six 3-second scenes


def test_a_second_channel_saves_restores_and_searches_beside_the_visual_one(
    tmp_path: Path, enc: ClipEncoder
) -> None:
    alone = open_state(tmp_path / "alone", enc)
    feed(alone, enc, FRAMES)
    q = enc.encode_images([solid(3)])[0]
    reference = visual_found(alone, q)
    assert reference  # something to compare
    alone.close()

    count = CountingChannel()
    state = open_state(tmp_path / "cam", enc, count)
    assert list(state.channels) == ["visual", "count"]
    feed(state, enc, FRAMES)
    state.push_audio(AudioChunk("cam", 20.0, np.zeros(16_000, np.float32)))  # sound past the last frame
    assert count.frames == 36 and count.chunks == 1
    assert state.resume_time() == 20.0  # the latest of the channels that report one
    assert state.visual.resume_time() == pytest.approx(17.5)

    q_query = ChannelQuery({"prescreen": q, "refine": q}, top_k=3, cfg=QueryConfig())
    found = state.search(q_query)
    assert set(found) == {"visual", "count"}
    assert found["count"].proposals == [] and found["count"].notes == ["counted 36 frames"]
    assert visual_found(state, q) == reference  # the visual answer is unchanged by the second channel
    result = answer({"cam": found}, {"cam": state}, q_query)["cam"]
    assert result.moments and all(m.channels == ["visual"] for m in result.moments)
    assert "counted 36 frames" in result.notes

    backgrounds = state.backgrounds(q)
    assert backgrounds["visual"].shape == (state.memory.tokens,) and backgrounds["count"].shape == (0,)
    np.testing.assert_array_equal(state.background(q), backgrounds["visual"])
    tokens = state.memory.tokens
    state.save({"offset": 0.0})
    state.close()
    assert count.closed == 1

    # Each channel in its own place: the visual one at the stream's top level, as ever.
    root = tmp_path / "cam"
    assert {"memory.npz", "cheap.npz", "ingest.json", "frames", "state.json", "count"} <= {
        p.name for p in root.iterdir()
    }
    assert (root / "count" / "count.json").is_file() and not (root / "visual").exists()

    again_count = CountingChannel()
    again = open_state(root, enc, again_count)
    assert (again_count.frames, again_count.chunks, again_count.last_t) == (36, 1, 20.0)
    assert again.memory.tokens == tokens and again.stats.frames == 36
    assert again.resume_time() == 20.0
    assert visual_found(again, q) == reference
    again.close()


def test_snapshots_from_before_channels_saved_their_counters_still_load(
    tmp_path: Path, enc: ClipEncoder
) -> None:
    state = open_state(tmp_path / "cam", enc)
    feed(state, enc, FRAMES[:12])
    state.save()
    stats = json.loads((tmp_path / "cam" / "state.json").read_text())["stats"]
    assert stats["frames"] == 12 and stats["last_time"] == pytest.approx(5.5)  # the summary, as ever
    state.close()
    (tmp_path / "cam" / "ingest.json").unlink()  # an older snapshot: counters only in state.json
    older = json.loads((tmp_path / "cam" / "state.json").read_text())
    for key in ("generation", "saved_at", "files"):  # and written before snapshot generations
        del older[key]
    (tmp_path / "cam" / "state.json").write_text(json.dumps(older))

    old = open_state(tmp_path / "cam", enc)
    assert old.stats.frames == 12 and old.stats.superimages == state.stats.superimages
    assert old.stats.last_time == pytest.approx(5.5)
    old.close()

    (tmp_path / "cam" / "ingest.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match="ingest counters"):
        open_state(tmp_path / "cam", enc)


def test_two_channels_of_one_name_are_refused(tmp_path: Path, enc: ClipEncoder) -> None:
    with pytest.raises(ValueError, match="count"):
        open_state(tmp_path / "cam", enc, CountingChannel(), CountingChannel())


def test_inline_encoding_routes_work_by_the_worker_each_item_names(tmp_path: Path) -> None:
    idx = VideoIndex.create(tmp_path / "idx", Settings(prescreen=TINY, index=cfg()))
    tap = TapChannel("image")
    idx.stream("cam").add_channel(tap)
    idx.ingest(FRAMES[:10])
    assert len(tap.results) == 10 and tap.in_flight == 0  # the image worker served the tap channel too
    assert all(r.shape == (idx.prescreen.dim,) for r in tap.results)
    assert idx.streams["cam"].memory.tokens > 0 and idx.streams["cam"].in_flight == 0

    speech = TapChannel("whisper")
    speech.name = "speech"
    idx.stream("mic").add_channel(speech)
    with pytest.raises(ConfigError, match=r"channel 'speech' of stream 'mic' needs a 'whisper' worker"):
        idx.ingest([Frame("mic", 0.0, solid(1))])
    assert speech.results == []
    idx.close()


class LockProbeChannel(CountingChannel):
    """Records, when its search is copied and when it is scored, whether another thread could take a lock."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.lock: Any = None
        self.free: list[bool] = []

    def _lock_free(self) -> bool:
        got: list[bool] = []

        def probe() -> None:  # another thread: the stream's RLock is re-entrant for its holder
            if self.lock.acquire(blocking=False):
                self.lock.release()
                got.append(True)
            else:
                got.append(False)

        t = threading.Thread(target=probe)
        t.start()
        t.join(10)
        return got == [True]

    def searcher(self, query: ChannelQuery) -> Callable[[], ChannelAnswer]:
        self.free.append(self._lock_free())

        def run() -> ChannelAnswer:
            self.free.append(self._lock_free())
            return self.search(query)

        return run


def test_other_channels_score_after_the_stream_lock_is_released(tmp_path: Path, enc: ClipEncoder) -> None:
    probe = LockProbeChannel()
    state = open_state(tmp_path / "cam", enc, probe)
    probe.lock = state._lock
    feed(state, enc, FRAMES[:12])
    q = enc.encode_images([solid(1)])[0]
    found = state.search(ChannelQuery({"prescreen": q, "refine": q}, top_k=3, cfg=QueryConfig()))
    assert probe.free == [False, True]  # copied under the lock, scored outside it
    assert found["probe"].notes == ["counted 12 frames"] and found["visual"].proposals
    state.close()
