"""Standing queries: unit behaviour of Watch, and a watch over a realtime replay end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.channels.retrieval import Query, encode_query
from agent.channels.text_search import TimedText
from agent.core.superimage import SuperImage
from agent.errors import QueryError
from agent.models.encoder import load_encoder
from agent.models.images import decode_image_b64
from agent.service.config import WatchConfig
from agent.service.protocol import (
    MomentEvent,
    MomentUpdateEvent,
    ServerEvent,
    WatchingEvent,
    encode,
    parse_event,
)
from agent.service.watch import Watch, relative_threshold
from tests.agent.service.helpers import client, needle_b64, needle_video, request, running, wait_for


def _si(t: float) -> SuperImage:
    return SuperImage("s", 2, np.zeros((4, 4, 3), np.uint8), (t, t + 0.5, t + 1.0, t + 1.5), 0.5)


def test_watch_opens_extends_and_closes() -> None:
    events: list[ServerEvent] = []
    q = np.array([1.0, 0.0], np.float32)
    hit, miss = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    w = Watch(
        "w",
        q,
        streams=None,
        cfg=WatchConfig(close_seconds=2.0),
        emit=events.append,
        wall_of=lambda s, t: 1000.0 + t,
        threshold=0.9,
    )
    for t, v in [(0, miss), (2, hit), (4, hit), (6, miss), (8, miss)]:
        w.on_embedding("s", _si(t), v)
    assert all(isinstance(e, MomentEvent | MomentUpdateEvent) for e in events)
    kinds = [(e.type, getattr(e, "closed", None)) for e in events]
    assert kinds == [("moment", False), ("moment.update", False), ("moment.update", True)]
    last = events[-1]
    assert isinstance(last, MomentUpdateEvent)
    final = last.moment
    assert (final.start, final.end) == (2.0, 6.0)
    assert final.wall_start is not None and final.wall_start.startswith("1970-01-01T00:16:42")
    first = events[0]
    assert isinstance(first, MomentEvent) and first.match == last.match == 1
    # What goes on the wire parses back into the same event.
    assert parse_event(encode(last)) == last


def test_watch_calibrates_relative_threshold_on_forward_scores() -> None:
    events: list[ServerEvent] = []
    rng = np.random.default_rng(0)
    q = np.array([1.0, 0.0], np.float32)
    w = Watch(
        "w",
        q,
        streams=["s"],
        cfg=WatchConfig(min_anchors=8, sigma=3.0),
        emit=events.append,
        wall_of=lambda s, t: None,
    )
    w.calibrate(np.zeros(3, np.float32))  # too few retained anchors: stays calibrating
    assert w.calibrating
    background = [np.array([0.2 + 0.02 * rng.standard_normal(), 0.98], np.float32) for _ in range(8)]
    for k, v in enumerate(background):
        w.on_embedding("s", _si(2.0 * k), v)
    assert not w.calibrating and isinstance(events[-1], WatchingEvent)
    assert events[-1].threshold == pytest.approx(w.threshold, abs=1e-6) and not events[-1].calibrating
    assert w.threshold is not None and 0.2 < w.threshold < 0.5
    w.on_embedding("other", _si(20.0), q)  # not a watched stream
    w.on_embedding("s", _si(20.0), q)
    opened = events[-1]
    assert isinstance(opened, MomentEvent) and opened.moment.stream == "s"
    assert relative_threshold(np.array([0.1, 0.3]), 1.0) == 0.3


async def test_watch_fires_on_needle_of_realtime_replay(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "live.mp4", before=4.0, needle=4.0, after=4.0)
    async with running(tmp_path) as (svc, url), client(url) as ws:
        watching = await request(ws, {"type": "watch", "id": "w", "image": needle_b64(), "threshold": 0.93})
        assert watching["type"] == "watching" and watching["threshold"] == 0.93
        # The watch scores super-images: its vector is the photo's still shot at the index's grid
        # (encoded where the streams run: here, or by a Ray actor when the gateway runs this test).
        (watch,) = svc.watches.values()
        grid = svc.settings.query_grid
        photo = decode_image_b64(needle_b64(), max_bytes=svc.settings.query.max_image_bytes)
        tiled = encode_query(Query(image=photo), load_encoder(svc.settings.prescreen), grid)
        assert grid == 2
        np.testing.assert_allclose(watch.qvec, tiled, atol=1e-5)
        backward = await wait_for(ws, lambda e: e.get("id") == "w")
        assert backward["type"] == "moments" and backward["moments"] == []  # nothing retained yet
        await request(
            ws,
            {
                "type": "streams.add",
                "id": "a",
                "stream": {"id": "live", "kind": "file", "path": str(video), "realtime": True},
            },
        )
        opened = await wait_for(ws, lambda e: e["type"] == "moment" and e["id"] == "w")
        m = opened["moment"]
        assert m["stream"] == "live" and 3.0 <= m["start"] <= 6.0, m
        assert m["wall_start"] is not None  # a realtime replay carries arrival wall-clock times
        closed = await wait_for(ws, lambda e: e["type"] == "moment.update" and e["closed"])
        assert closed["match"] == opened["match"]
        assert 7.0 <= closed["moment"]["end"] <= 10.0, closed
        cancelled = await request(ws, {"type": "cancel", "id": "c", "target": "w"})
        assert cancelled["type"] == "cancelled" and not svc.watches


def _said(text: str, start: float) -> TimedText:
    words = tuple((start + 0.4 * i, start + 0.4 * i + 0.3, " " + w) for i, w in enumerate(text.split()))
    return TimedText(start, words[-1][1], text, words)


def test_text_watch_fires_once_per_span_holding_every_word() -> None:
    events: list[ServerEvent] = []
    w = Watch(
        "w",
        np.zeros(0, np.float32),
        streams=None,
        cfg=WatchConfig(),
        emit=events.append,
        wall_of=lambda s, t: None,
        text="when was gate four mentioned",
        channels=["speech"],
    )
    assert not w.calibrating and not w.visual  # no encoder vector, no anchors needed
    w.on_embedding("s", _si(0.0), np.ones(2, np.float32))  # super-images are not watched
    w.on_text_span("s", "speech", _said("the bus is at gate two", 1.0))  # half the words: no match
    w.on_text_span("s", "ocr", _said("gate 4", 2.0))  # a channel the watch leaves out
    assert events == []
    w.on_text_span("s", "speech", _said("the truck is waiting at gate 4", 9.0))
    (event,) = events
    assert isinstance(event, MomentEvent) and event.closed and event.match == 1
    m = event.moment
    assert m.channels == ["speech"] and m.quotes == {"speech": "gate 4"} and m.score == 1.0
    assert (m.start, m.evidence) == (9.0, [11.0, 11.4])
    assert parse_event(encode(event)) == event


def test_text_watch_word_share_and_channels_default_to_every_channel() -> None:
    events: list[ServerEvent] = []
    w = Watch(
        "w",
        np.array([1.0, 0.0], np.float32),
        streams=["s"],
        cfg=WatchConfig(),
        emit=events.append,
        wall_of=lambda s, t: None,
        threshold=0.9,
        text="loading dock north",
        word_share=0.6,
    )
    assert w.visual  # no channel filter: super-images and text spans both match
    w.on_text_span("s", "ocr", _said("LOADING DOCK B", 3.0))  # 2 of 3 words >= 0.6
    w.on_text_span("other", "ocr", _said("LOADING DOCK B", 3.0))  # not a watched stream
    (event,) = events
    assert isinstance(event, MomentEvent) and event.moment.quotes == {"ocr": "LOADING DOCK"}
    assert event.moment.score == pytest.approx(2 / 3, abs=1e-6)
    w.on_embedding("s", _si(5.0), np.array([1.0, 0.0], np.float32))
    assert isinstance(events[-1], MomentEvent) and events[-1].moment.channels == []


async def test_channel_filter_names_only_indexed_channels(tmp_path: Path) -> None:
    """A typo or a channel that is off would make a watch that never fires: refused, typed."""
    async with running(tmp_path) as (svc, url), client(url) as ws:  # speech and OCR off by default
        for i, fields in enumerate(
            [
                {"text": "gate four", "channels": ["speach"]},
                {"text": "gate four", "channels": ["speech"]},
                {"image": needle_b64(), "channels": ["ocr"]},
            ]
        ):
            for kind in ("watch", "query"):
                answer = await request(ws, {"type": kind, "id": f"{kind}{i}", **fields})
                assert answer["type"] == "error" and answer["code"] == "bad_query", answer
                assert "channel" in answer["message"]
        stop_words = Query(text="what was said", channels=["speech"])  # as if speech were on
        with pytest.raises(QueryError, match="could never match"):
            await svc.serving.open_watch("sw", stop_words, lambda e: None, threshold=None, close_seconds=None)
        too_many = await request(ws, {"type": "query", "id": "m", "text": "x", "channels": ["visual"] * 9})
        assert too_many["type"] == "error" and too_many["code"] == "bad_message", too_many
        assert not svc.watches
        ok = await request(ws, {"type": "watch", "id": "v", "text": "gate", "channels": ["visual"]})
        assert ok["type"] == "watching"
