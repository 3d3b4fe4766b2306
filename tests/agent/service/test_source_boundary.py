"""Where the service meets the streams library: persisted specs, and stream errors as vmr errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import (
    ConfigError,
    CorruptVideoError,
    ProtocolError,
    SourceError,
    StreamDisconnectedError,
    UnknownStreamError,
    from_stream_error,
    translating_stream_errors,
)
from agent.index.stream_state import StreamState
from agent.service import stream_runner
from agent.service.config import load_spec, parse_serve_data, parse_spec
from agent.service.stream_runner import saved_token
from streams import errors as se
from streams.file import probe
from streams.registry import OpenContext
from streams.source import Source, SourceSpec
from tests.agent.service.helpers import add, client, request, running, until
from tests.videos import make_video, random_bytes_file

# What ``service_streams.json`` held before kinds had their own specs (one model, defaults left out).
OLD_SPECS = [
    {"id": "cam", "kind": "file", "path": "VIDEO", "fps": 2.0},
    {"id": "rec", "kind": "segments", "path": "FOLDER", "start_wall": "2024-05-01T12:00:00Z"},
    {"id": "pub", "kind": "whip"},
]


@pytest.mark.parametrize(
    ("error", "mapped", "code"),
    [
        (se.SourceUnavailableError("gone"), SourceError, "source"),
        (se.CorruptMediaError("bad"), CorruptVideoError, "corrupt_video"),
        (se.DisconnectedError("lost"), StreamDisconnectedError, "stream_disconnected"),
        (se.UnknownSourceError("who"), UnknownStreamError, "unknown_stream"),
        (se.BadOfferError("sdp"), ProtocolError, "bad_message"),
        (se.StreamError("other"), SourceError, "source"),
    ],
)
def test_stream_errors_keep_their_client_codes(error: se.StreamError, mapped: type, code: str) -> None:
    out = from_stream_error(error)
    assert type(out) is mapped and out.code == code and str(out) == str(error)
    with pytest.raises(mapped) as info, translating_stream_errors():
        raise error
    assert info.value.__cause__ is error


def test_cli_boundary_translates_probe_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as missing, translating_stream_errors():
        probe(tmp_path / "none.mp4")
    assert not isinstance(missing.value, CorruptVideoError)
    with pytest.raises(CorruptVideoError), translating_stream_errors():
        probe(random_bytes_file(tmp_path / "junk.mp4"))


def test_specs_validate_through_the_union_with_typed_errors(tmp_path: Path) -> None:
    for data in OLD_SPECS:
        spec = load_spec(data)
        assert spec.model_dump(mode="json", exclude_defaults=True) == data
    with pytest.raises(ConfigError, match="does not match"):
        parse_spec({"id": "x", "kind": "fax"})
    with pytest.raises(ConfigError, match="invalid stream id"):
        parse_spec({"id": "../etc", "kind": "whip"})
    with pytest.raises(ConfigError, match="url"):
        parse_spec({"id": "x", "kind": "rtsp"})
    cfg = parse_serve_data({"streams": [{"id": "a", "kind": "file", "path": "v.mp4"}]}, base=tmp_path)
    assert cfg.streams[0].location()["path"] == str(tmp_path / "v.mp4")
    with pytest.raises(ConfigError, match="unique"):
        parse_serve_data({"streams": [{"id": "a", "kind": "whip"}, {"id": "a", "kind": "whip"}]})


def test_saved_token_reads_old_and_new_snapshots() -> None:
    assert saved_token({"resume": {"seconds": 3.5}}) == {"seconds": 3.5}
    assert saved_token({"segments_position": {"done": "a.ts"}}) == {"done": "a.ts"}
    assert saved_token({"resume": None}) is None
    assert saved_token({}) is None


async def test_persisted_specs_of_every_kind_are_restored(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", [(2.0, (200, 30, 30), True), (2.0, (30, 30, 200), True)], fps=10)
    folder = tmp_path / "rec"
    folder.mkdir()
    specs = json.loads(json.dumps(OLD_SPECS).replace("VIDEO", str(video.path)).replace("FOLDER", str(folder)))
    index = tmp_path / "index"
    index.mkdir()
    (index / "service_streams.json").write_text(json.dumps({"version": 1, "streams": specs}))
    async with running(tmp_path) as (svc, url), client(url) as ws:
        assert sorted(svc.runners) == ["cam", "pub", "rec"]
        cam = await until(ws, "cam", lambda s: s["status"] not in ("starting", "running"), limit=60)
        assert cam["status"] == "done" and cam["frames"] == 8 and cam["path"] == str(video.path)
        listed = await request(ws, {"type": "streams.list", "id": "l"})
        kinds = {s["id"]: s["kind"] for s in listed["streams"]}
        assert kinds == {"cam": "file", "rec": "segments", "pub": "whip"}
    saved = json.loads((index / "service_streams.json").read_text())
    assert saved["streams"] == specs  # written back as it was read


async def test_typed_errors_reach_clients_with_the_same_codes(tmp_path: Path) -> None:
    junk = random_bytes_file(tmp_path / "junk.mp4")
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        unknown = await request(ws, {"type": "streams.add", "id": "u", "stream": {"id": "x", "kind": "fax"}})
        assert (unknown["type"], unknown["code"]) == ("error", "config")
        missing = {"id": "m", "kind": "file", "path": str(tmp_path / "none.mp4")}
        gone = await request(ws, {"type": "streams.add", "id": "g", "stream": missing})
        assert (gone["type"], gone["code"]) == ("error", "source")
        await add(ws, {"id": "junk", "kind": "file", "path": str(junk)})
        failed = await until(ws, "junk", lambda s: s["status"] not in ("starting", "running"), limit=30)
        assert failed["status"] == "failed" and failed["error"]["code"] == "corrupt_video"
        assert failed["progress"] == 0.0 and failed["frames"] == 0  # failed at once: not "complete"
        source = failed["source"]
        assert source["state"] == "done" and "cannot open" in source["last_error"]
        assert source["queue_policy"] == "block" and source["damaged_packets"] == 0


async def test_a_file_damaged_mid_way_ends_done_with_its_damage_counted(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "v.mp4", [(3.0, (200, 30, 30), True), (3.0, (30, 30, 200), True)], fps=10)
    data = bytearray(spec.path.read_bytes())
    lo, hi = int(len(data) * 0.4), int(len(data) * 0.6)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "dmg", "kind": "file", "path": str(damaged)})
        done = await until(ws, "dmg", lambda s: s["status"] not in ("starting", "running"), limit=60)
        assert done["status"] == "done" and done["progress"] == 1.0 and done["frames"] > 0
        assert done["source"]["damaged_packets"] > 0  # decoded past the damage, and it says so
        assert done["source"]["state"] == "done" and done["source"]["last_error"] is None


async def test_the_resume_point_is_found_off_the_loop_before_the_source_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_resume, real_open = stream_runner.resume_time, stream_runner.open_source

    def resume(state: StreamState) -> float | None:
        try:
            asyncio.get_running_loop()
            events.append("resume on the loop")
        except RuntimeError:
            events.append("resume in a thread")
        return real_resume(state)

    def open_source(spec: SourceSpec, context: OpenContext) -> Source:
        events.append("open")
        return real_open(spec, context)

    monkeypatch.setattr(stream_runner, "resume_time", resume)
    monkeypatch.setattr(stream_runner, "open_source", open_source)
    video = make_video(tmp_path / "v.mp4", [(2.0, (200, 30, 30), True)], fps=10)
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "cam", "kind": "file", "path": str(video.path)})
        done = await until(ws, "cam", lambda s: s["status"] not in ("starting", "running"), limit=60)
    assert done["status"] == "done" and done["frames"] == 4
    assert events == ["resume in a thread", "open"]
