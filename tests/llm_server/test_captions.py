"""Captions, the QA filter, S_q, the LRU and the persistent store (vision stub over real HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_server.captions import CaptionCache, Captioner, CaptionStore, importance
from llm_server.client import LLMClient
from llm_server.protocol import QueryUnderstanding
from llm_server.types import Candidate
from tests.llm_server.doubles import HashEncoder, MemoryFrames, solid
from tests.llm_server.recording_server import RecordingServer, vision_reply

FRAMES = MemoryFrames({float(t): solid("red" if 10 <= t < 20 else "blue") for t in range(0, 30, 2)})
REGIONS = [Candidate(10, 18, 0.3, "s"), Candidate(22, 28, 0.2, "s")]
U = QueryUnderstanding(objects=["red car"])


def test_importance_formula() -> None:
    f = np.array([[1, 0], [0, 1]], np.float32)
    c = np.array([[1, 0], [1, 0]], np.float32)
    q = np.array([1, 0], np.float32)
    s = importance(f, c, q, a1=0.3, a2=0.7)
    # Row 0: frame and caption agree and match the query; row 1: the caption matches
    # the query but not its frame, so it lends nothing.
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        importance(f, c[:1], q)


def test_lru_evicts_least_recent() -> None:
    cache = CaptionCache(capacity=2)
    cache.put("s", 1.0, "", "a")
    cache.put("s", 2.0, "", "b")
    assert cache.get("s", 1.0000001, "") == "a"  # touch 1.0, rounding to ms
    cache.put("s", 3.0, "", "c")
    assert cache.get("s", 2.0, "") is None and cache.get("s", 1.0, "") == "a" and len(cache) == 2


def test_store_persists_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "captions.jsonl"
    store = CaptionStore(path)
    store.put("s", 4.0, "a blue frame")
    store.put("s", 12.0, "a red frame")
    with path.open("a") as fh:
        fh.write('{"stream": "s", "t": 9')  # a crash mid-append
    again = CaptionStore(path)
    assert len(again) == 2 and again.nbytes > 0
    assert again.nearest("s", 11.5, tolerance=1.0) == "a red frame"
    assert again.nearest("s", 8.0, tolerance=1.0) is None
    assert again.nearest("other", 12.0, tolerance=1.0) is None


async def test_storage_mode_captions_on_demand_and_caches() -> None:
    async with RecordingServer(vision=True, reply=vision_reply) as srv, LLMClient(srv.base_url) as client:
        captioner = Captioner(client, HashEncoder(), mode="storage")
        scored = await captioner.caption_regions("s", "red car", REGIONS, FRAMES, U, frames_per_region=2)
        calls = len(srv.bodies("/v1/chat/completions"))
        again = await captioner.caption_regions("s", "red car", REGIONS, FRAMES, U, frames_per_region=2)
        calls_again = len(srv.bodies("/v1/chat/completions")) - calls
    red = [c for c in scored if 10 <= c.t < 20]
    blue = [c for c in scored if c.t >= 20]
    assert len(red) == 2 and len(blue) == 2
    assert all(c.relevant and "matching the query" in c.text for c in red)
    assert all(not c.relevant and c.text == "a blue frame" for c in blue)
    assert min(c.weight for c in red) > max(c.weight for c in blue)
    assert [c.text for c in again] == [c.text for c in scored]
    assert calls_again == 2  # only the two QA-filter questions; captions came from the cache
    assert captioner.usage.prompt_tokens > 0


async def test_latency_mode_uses_ingest_captions(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "c.jsonl")
    async with RecordingServer(vision=True, reply=vision_reply) as srv, LLMClient(srv.base_url) as client:
        captioner = Captioner(client, HashEncoder(), mode="latency", store=store)
        for t in (22.0, 26.0):
            await captioner.ingest("s", t, FRAMES.get_jpeg(t)[1])
        before = len(srv.bodies("/v1/chat/completions"))
        scored = await captioner.caption_regions("s", "red car", REGIONS[1:], FRAMES, U, frames_per_region=2)
        asked = srv.bodies("/v1/chat/completions")[before:]
    assert len(store) == 2 and store.nbytes > 0
    assert [c.text for c in scored] == ["a blue frame", "a blue frame"]
    assert len(asked) == 1 and "Do these frames show" in json.dumps(asked[0])  # no re-captioning


async def test_text_only_server_gets_no_caption_requests() -> None:
    async with RecordingServer(vision=False, reply=vision_reply) as srv, LLMClient(srv.base_url) as client:
        scored = await Captioner(client, HashEncoder()).caption_regions("s", "red car", REGIONS, FRAMES, U)
        probes = len(srv.bodies("/v1/chat/completions"))
    assert scored == []
    assert probes <= 4  # capability probes only


def test_latency_mode_needs_a_store() -> None:
    with pytest.raises(ValueError):
        Captioner(LLMClient("http://127.0.0.1:9", model="m"), HashEncoder(), mode="latency")
