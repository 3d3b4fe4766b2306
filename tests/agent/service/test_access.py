"""Operator-controlled sources: media roots, video formats, RTSP hosts, caps (server on port 0)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from agent.errors import LimitExceededError
from agent.service.access import SourcePolicy, TokenBucket
from agent.service.auth import client_key
from agent.service.config import SourcesConfig
from streams.errors import FormatNotAllowedError
from streams.file import FileSpec, open_file
from streams.media import Frame
from streams.registry import OpenContext
from streams.segments import SegmentsSpec
from tests.agent.service.helpers import add, client, request, running, until
from tests.streams.servers import free_port
from tests.videos import Scene, make_video


def _video(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_video(path, [Scene(1.0, (200, 30, 30), True)], fps=10)
    return path


async def _add(ws: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return await request(ws, {"type": "streams.add", "id": f"add-{spec['id']}", "stream": spec})


def _refusal(event: dict[str, Any]) -> tuple[str, str, str]:
    return event["type"], event["code"], event["message"]


async def test_paths_only_under_media_roots_with_one_error_for_missing_and_forbidden(tmp_path: Path) -> None:
    media, outside = tmp_path / "media", tmp_path / "outside"
    inside = _video(media / "cams" / "door.mp4")
    secret = _video(outside / "secret.mp4")
    (media / "link.mp4").symlink_to(secret)  # a link out of the root
    (media / "ok.mp4").symlink_to(inside)  # a link that stays inside
    (media / "rec").mkdir()
    sources = SourcesConfig(media_roots=[media], add_burst=20)
    async with running(tmp_path, sources=sources) as (_svc, url), client(url) as ws:
        refused = [
            await _add(ws, {"id": "a", "kind": "file", "path": str(secret)}),  # exists, outside
            await _add(
                ws, {"id": "b", "kind": "file", "path": str(outside / "none.mp4")}
            ),  # missing, outside
            await _add(ws, {"id": "c", "kind": "file", "path": str(media / "none.mp4")}),  # missing, inside
            await _add(
                ws,
                {
                    "id": "d",
                    "kind": "file",
                    "path": str(media / "cams" / ".." / ".." / "outside" / "secret.mp4"),
                },
            ),
            await _add(ws, {"id": "e", "kind": "file", "path": str(media / "link.mp4")}),
            await _add(ws, {"id": "f", "kind": "file", "path": str(media / "rec")}),  # a folder, not a file
            await _add(ws, {"id": "g", "kind": "segments", "path": str(outside)}),
            await _add(ws, {"id": "h", "kind": "file", "path": "/etc/passwd"}),
            await _add(
                ws, {"id": "i", "kind": "file", "path": "concat:" + str(secret)}
            ),  # an FFmpeg protocol
        ]
        assert len({_refusal(e) for e in refused}) == 1, refused  # byte for byte the same answer
        assert _refusal(refused[0])[:2] == ("error", "source")
        assert str(outside) not in str(refused)
        door = await add(
            ws, {"id": "door", "kind": "file", "path": "cams/door.mp4"}
        )  # relative: under a root
        assert door["stream"]["path"] == str(inside.resolve())
        ok = await add(ws, {"id": "ok", "kind": "file", "path": str(media / "ok.mp4")})
        assert ok["stream"]["path"] == str(inside.resolve())  # the resolved target runs, not the link
        await add(ws, {"id": "rec", "kind": "segments", "path": str(media / "rec")})
        listed = await request(ws, {"type": "streams.list", "id": "l"})
        assert sorted(s["id"] for s in listed["streams"]) == ["door", "ok", "rec"]


async def test_no_media_roots_no_client_files_but_configured_streams_run(tmp_path: Path) -> None:
    video = _video(tmp_path / "v.mp4")
    async with running(tmp_path, sources=SourcesConfig()) as (svc, url), client(url) as ws:
        err = await _add(ws, {"id": "a", "kind": "file", "path": str(video)})
        assert _refusal(err)[:2] == ("error", "source")
        # The operator's own streams (config file, or the Python API) are not the client's to refuse.
        from agent.service.config import parse_spec

        await svc.serving.add_stream(parse_spec({"id": "op", "kind": "file", "path": str(video)}))
        done = await until(ws, "op", lambda s: s["status"] == "done", limit=60)
        assert done["frames"] >= 1


async def test_text_files_and_pictures_are_not_read_as_video(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "release.nfo").write_text(
        "Movie.2024.1080p\nRelease notes: the admin password is hunter2\n" * 20
    )
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(media / "photo.png")
    Image.fromarray(np.full((64, 64, 3), 50, np.uint8)).save(media / "photo.jpg")
    async with (
        running(tmp_path, sources=SourcesConfig(media_roots=[media])) as (_svc, url),
        client(url) as ws,
    ):
        for name in ("release.nfo", "photo.png", "photo.jpg"):  # tty, png_pipe, jpeg_pipe: refused by FFmpeg
            err = await _add(ws, {"id": name.replace(".", "-"), "kind": "file", "path": str(media / name)})
            assert _refusal(err)[:2] == ("error", "source_not_allowed"), err
            assert "container format is not an allowed video format" in err["message"], err
        assert (await request(ws, {"type": "streams.list", "id": "l"}))["streams"] == []
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
            assert (await http.get("/thumbnails/release-nfo/0.000.jpg")).status_code == 404
    relaxed = SourcesConfig(media_roots=[media], video_formats=["tty"])  # the operator may allow more
    async with running(tmp_path, sources=relaxed) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "nfo", "kind": "file", "path": str(media / "release.nfo")})


async def test_rtsp_to_the_services_own_port_or_an_unlisted_host_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        own = int(url.rsplit(":", 1)[1])
        for host in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0"):
            err = await _add(ws, {"id": "self", "kind": "rtsp", "url": f"rtsp://{host}:{own}/ws"})
            assert _refusal(err)[:2] == ("error", "source_not_allowed") and "own port" in err["message"]
        err = await _add(ws, {"id": "x", "kind": "rtsp", "url": f"http://u:pw@127.0.0.1:{own}/"})
        assert _refusal(err)[:2] == ("error", "source_not_allowed") and "pw" not in err["message"]
    port = free_port()
    sources = SourcesConfig(media_roots=[tmp_path], rtsp_hosts=[f"127.0.0.1:{port}", "cam.example"])
    async with running(tmp_path, sources=sources) as (_svc, url), client(url) as ws:
        err = await _add(ws, {"id": "other", "kind": "rtsp", "url": f"rtsp://127.0.0.1:{port + 1}/x"})
        assert _refusal(err)[:2] == ("error", "source_not_allowed") and "allowed RTSP hosts" in err["message"]
        await add(ws, {"id": "listed", "kind": "rtsp", "url": f"rtsp://127.0.0.1:{port}/x"})


async def test_reconnect_attempts_are_capped_then_the_stream_fails_with_a_reason(tmp_path: Path) -> None:
    sources = SourcesConfig(media_roots=[tmp_path], reconnect_attempts=1)
    async with running(tmp_path, sources=sources) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "dead", "kind": "rtsp", "url": f"rtsp://127.0.0.1:{free_port()}/cam"})
        failed = await until(ws, "dead", lambda s: s["status"] == "failed", limit=60)
        assert (
            failed["error"]["code"] == "stream_disconnected" and "open failed" in failed["error"]["message"]
        )


async def test_the_reconnect_cap_binds_clients_streams_and_not_the_operators() -> None:
    # A client's URL gets the cap written into its spec (it survives restarts); its own
    # ``retries`` may only be lower. The operator's cameras (config file) keep retrying: a
    # camera down for an hour comes back by itself.
    from streams.registry import OpenContext
    from streams.rtsp import RTSPSpec, open_rtsp

    policy = SourcePolicy(SourcesConfig(reconnect_attempts=3))
    url = "rtsp://cam.example/live"
    asked = [None, 100, 1]
    admitted = [
        await policy.admit({"id": f"c{i}", "kind": "rtsp", "url": url, "retries": r})
        for i, r in enumerate(asked)
    ]
    assert [s.retries for s in admitted if isinstance(s, RTSPSpec)] == [3, 3, 1]
    unlimited = SourcePolicy(SourcesConfig(reconnect_attempts=None))
    free = await unlimited.admit({"id": "u", "kind": "rtsp", "url": url})
    assert isinstance(free, RTSPSpec) and free.retries is None
    operator = RTSPSpec(id="op", kind="rtsp", url=url)
    source = open_rtsp(operator, OpenContext(fps=2.0))
    try:
        assert source.retries is None
    finally:
        await source.close()


async def test_caps_on_streams_and_on_the_add_rate(tmp_path: Path) -> None:
    async with running(tmp_path, sources=SourcesConfig(max_streams=2)) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "p1", "kind": "whip"})
        await add(ws, {"id": "p2", "kind": "whip"})
        err = await _add(ws, {"id": "p3", "kind": "whip"})
        assert _refusal(err)[:2] == ("error", "limit_exceeded") and "2 streams" in err["message"]
        await request(ws, {"type": "streams.remove", "id": "r", "stream": "p1"})
        await add(ws, {"id": "p3", "kind": "whip"})  # room again
    rate = SourcesConfig(add_burst=2, adds_per_minute=0.001)
    async with running(tmp_path, sources=rate) as (_svc, url):
        async with client(url) as ws:
            await add(ws, {"id": "q1", "kind": "whip"})
            assert (await _add(ws, {"id": "q1", "kind": "whip"}))["code"] == "config"  # taken id: still spent
            err = await _add(ws, {"id": "q2", "kind": "whip"})
            assert _refusal(err)[:2] == ("error", "limit_exceeded") and "streams.add" in err["message"]
        async with client(url) as ws:  # per address: reconnecting does not refill the budget
            err = await _add(ws, {"id": "q2", "kind": "whip"})
            assert _refusal(err)[:2] == ("error", "limit_exceeded") and "streams.add" in err["message"]


def test_the_add_budget_is_per_address_in_a_bounded_table() -> None:
    now = [0.0]
    policy = SourcePolicy(
        SourcesConfig(add_burst=1, adds_per_minute=0.001, add_table=16), clock=lambda: now[0]
    )
    policy.spend_add("10.0.0.1")
    with pytest.raises(LimitExceededError):
        policy.spend_add("10.0.0.1")  # the same address, whatever its connection
    policy.spend_add("10.0.0.2")  # another address has its own budget
    with pytest.raises(LimitExceededError):
        policy.spend_add("10.0.0.1")  # now used more recently than 10.0.0.2
    for k in range(3, 18):  # 15 more addresses: the table (16) forgets the least recently used
        policy.spend_add(f"10.0.0.{k}")
    assert len(policy._buckets) == 16
    with pytest.raises(LimitExceededError):
        policy.spend_add("10.0.0.1")  # still remembered
    policy.spend_add("10.0.0.2")  # forgotten: starts full again


def test_addresses_are_keyed_ipv4_by_address_and_ipv6_by_their_64() -> None:
    assert client_key("10.0.0.1") != client_key("10.0.0.2")  # IPv4: one key per address
    rotated = ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:DB8:1:2:a:b:c:d"]
    assert {client_key(a) for a in rotated} == {"2001:db8:1:2::/64"}  # one host's privacy addresses
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"  # the next /64: another host
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"  # IPv4-mapped: the IPv4 client it is
    assert client_key("fe80::1%eth0") == "fe80::/64"  # the zone id is not part of the host
    assert client_key("not an address") == "not an address" and client_key("") == ""


def test_one_ipv6_host_cannot_rotate_addresses_for_a_fresh_add_budget() -> None:
    policy = SourcePolicy(SourcesConfig(add_burst=2, adds_per_minute=0.001, add_table=16), clock=lambda: 0.0)
    policy.spend_add("2001:db8::1")
    policy.spend_add("2001:db8::2")
    with pytest.raises(LimitExceededError):
        policy.spend_add("2001:db8::3")  # the same /64
    policy.spend_add("2001:db8:0:1::1")  # another /64 has its own budget


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=0.5, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(1.0) is False and bucket.take(2.0) is True  # one token per 2 s
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]  # never above the burst


def test_config_media_roots_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    from agent.service.config import load_serve_file

    cfg_file = tmp_path / "vmr.toml"
    cfg_file.write_text('[service.sources]\nmedia_roots = ["media", "/srv/recordings"]\n')
    roots = load_serve_file(cfg_file).service.sources.media_roots
    assert roots == [tmp_path / "media", Path("/srv/recordings")]
    assert os.path.isabs(roots[0])


async def test_segment_files_of_a_clients_folder_are_probed_for_a_video_demuxer(tmp_path: Path) -> None:
    # A folder under a root passes at add time; its files come later, so each is checked at open.
    rec = tmp_path / "media" / "rec"
    _video(rec / "seg000.mp4")
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(rec / "seg001.mp4", format="JPEG")
    sources = SourcesConfig(media_roots=[tmp_path / "media"])
    async with running(tmp_path, sources=sources) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "rec", "kind": "segments", "path": "rec", "formats": ["mov", "jpeg_pipe"]})
        st = await until(ws, "rec", lambda s: (s["source"] or {}).get("segments_refused") == 1, limit=60)
        assert st["status"] == "running" and st["source"]["segments_done"] == 1
        assert "seg001.mp4: container format is not an allowed video format" in st["source_error"]
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
            metrics = (await http.get("/metrics")).text
        assert 'vmr_source_events_total{event="segments_refused",stream="rec"} 1.0' in metrics
    policy = SourcePolicy(SourcesConfig(media_roots=[tmp_path / "media"]))
    spec = await policy.admit({"id": "r", "kind": "segments", "path": "rec"})
    assert isinstance(spec, SegmentsSpec) and spec.formats is not None
    assert "mov" in spec.formats and "jpeg_pipe" not in spec.formats  # a client may only narrow the list


async def test_a_clients_file_replaced_after_it_was_added_is_refused_at_its_next_open(tmp_path: Path) -> None:
    # The allow-list is written into the spec, so a loop or a restart reopens with it: no check-then-use gap.
    media = tmp_path / "media"
    clip = _video(media / "clip.mp4")
    policy = SourcePolicy(SourcesConfig(media_roots=[media]))
    spec = await policy.admit({"id": "c", "kind": "file", "path": "clip.mp4", "formats": ["mp4", "png_pipe"]})
    assert isinstance(spec, FileSpec) and spec.formats == ["mp4"]  # the client may only narrow the list
    async with open_file(spec, OpenContext(fps=2.0)) as src:
        assert [item async for item in src if isinstance(item, Frame)]  # admitted: it plays
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(clip, format="JPEG")
    reopened = FileSpec.model_validate_json(spec.model_dump_json())  # as persisted, then restarted
    frames: list[Frame] = []
    with pytest.raises(FormatNotAllowedError):
        async with open_file(reopened, OpenContext(fps=2.0)) as src:
            frames += [item async for item in src if isinstance(item, Frame)]
    assert frames == []


@pytest.mark.parametrize("value", ["inf", "nan", "-1.0", "1e300"])
def test_a_config_files_watch_close_seconds_must_be_a_sane_number(tmp_path: Path, value: str) -> None:
    from agent.errors import ConfigError
    from agent.service.config import load_serve_file

    cfg_file = tmp_path / "vmr.toml"
    cfg_file.write_text(f"[service.watch]\nclose_seconds = {value}\n")  # TOML writes inf and nan
    with pytest.raises(ConfigError, match="close_seconds"):
        load_serve_file(cfg_file)
