"""The web page end to end in headless chromium, against a real service on a free port."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from PIL import Image
from playwright.async_api import Page

from agent.config import IndexConfig
from tests.agent.service.helpers import (
    NEEDLE,
    add,
    client,
    needle_video,
    segments_with_a_missing_one,
    tiny_settings,
    until,
)
from tests.agent.service.web.browser import http_url, page_on, shot

pytestmark = pytest.mark.timeout(240)

DONE = 90.0
"""Seconds a replay as fast as possible may take to be ingested here."""


async def ingested(url: str, video: Path, stream: str = "vid") -> None:
    """Add ``video`` as a file stream replayed as fast as possible and wait until it is done."""
    async with client(url) as ws:
        await add(ws, {"id": stream, "kind": "file", "path": str(video), "realtime": False})
        await until(ws, stream, lambda s: s["status"] == "done", limit=DONE)


async def ask_needle_and_play(page: Page, stream: str = "vid") -> tuple[float, float]:
    """Ask with the needle photo, click the best moment of ``stream``; returns its span once the player is in it.

    The player's stream time is its current time plus ``data-offset`` (0 for a file played by range
    requests, the clip's start for a clip of stored frames).
    """
    await page.set_input_files("#q-image", str(NEEDLE))
    await page.locator("#q-preview").wait_for()
    await page.get_by_role("button", name="Ask", exact=True).click()
    await page.locator('#results[data-phase="refined"]').wait_for(state="attached")  # after the first answer
    best = page.locator(f'.answer[data-stream="{stream}"] .timeline .moment').first
    await best.wait_for()
    start = float(await best.get_attribute("data-start") or "nan")
    end = float(await best.get_attribute("data-end") or "nan")
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.evidence img')].some(i => i.complete && i.naturalWidth > 0)"
    )
    await best.click()
    # The player seeks to the moment and plays: its current time lands inside the span.
    await page.wait_for_function(
        "([s, e]) => { const v = document.getElementById('player');"
        " const t = v.currentTime + Number(v.dataset.offset || 0);"
        " return v.readyState >= 2 && t >= s && t <= e + 0.5; }",
        arg=[start, end],
    )
    return start, end


async def test_page_shows_stream_state_counts_coverage_and_thumbnail(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4")
    async with page_on(tmp_path) as (_, url, page):
        await ingested(url, video)
        await page.goto(http_url(url))
        item = page.locator('li[data-stream="vid"]')
        await item.locator(".state.done").wait_for()
        counts = await item.locator(".counts").inner_text()
        assert "frames" in counts and "drops 0" in counts, counts
        assert await item.get_attribute("data-stream") == "vid"
        meter = item.locator(".coverage")
        assert await meter.get_attribute("aria-valuenow") == "100"
        await page.wait_for_function(
            "() => { const i = document.querySelector('li[data-stream=\"vid\"] img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        await shot(page, "streams")
        assert page.errors == []  # type: ignore[attr-defined]


async def test_image_query_shows_the_needle_and_clicking_plays_it(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=4.0, needle=4.0, after=4.0)
    async with page_on(tmp_path) as (_, url, page):
        await ingested(url, video)
        await page.goto(http_url(url))
        await page.locator('li[data-stream="vid"]').wait_for()
        start, end = await ask_needle_and_play(page)
        assert 3.0 <= start <= 6.0 and start < end, (start, end)  # the needle is shown at 4-8 s
        await shot(page, "answer")
        assert page.errors == []  # type: ignore[attr-defined]


async def test_a_live_stream_with_a_gap_shows_it_and_plays_a_clip_of_stored_frames(tmp_path: Path) -> None:
    folder = segments_with_a_missing_one(tmp_path / "rec")
    settings = tiny_settings()
    settings = settings.model_copy(
        update={"index": IndexConfig(**{**settings.index.model_dump(), "gap_seconds": 1.5})}
    )
    async with page_on(tmp_path, settings=settings) as (_, url, page):
        async with client(url) as ws:
            await add(ws, {"id": "rec", "kind": "segments", "path": str(folder)})
            await until(
                ws, "rec", lambda s: (s["last_time"] or 0) >= 11.0 and s["gaps"]["count"] >= 1, limit=DONE
            )
        await page.goto(http_url(url))
        item = page.locator('li[data-stream="rec"]')
        gap = item.locator(".coverage .span.gap")
        await gap.wait_for()
        # Drawn where the missing segment was, apart from the retained stretches around it.
        start, end = (
            float(await gap.get_attribute("data-start") or "nan"),
            float(await gap.get_attribute("data-end") or "nan"),
        )
        assert 7.0 <= start < 8.5 and 9.9 <= end <= 10.5, (start, end)
        assert await item.locator(".coverage .span.retained").count() == 2
        label = await item.locator(".coverage").get_attribute("aria-label") or ""
        assert "1 gap" in label, label
        assert "1 gap" in await item.locator(".legend").inner_text()
        assert await page.locator("#q-channels").is_hidden()  # one channel (visual): nothing to choose
        # A segment folder has no one source file: clicking a moment plays a clip from /clips.
        async with page.expect_response(lambda r: "/clips/rec.mp4?" in r.url and r.status == 200):
            start, end = await ask_needle_and_play(page, "rec")
        assert 3.0 <= start <= 6.0 and start < end, (start, end)  # the needle is shown at 4-8 s
        # The answer's timeline draws the same gap as the coverage bar.
        line = page.locator('.answer[data-stream="rec"] .timeline')
        hole = line.locator(".span.gap")
        assert await hole.count() == 1
        assert (await hole.get_attribute("data-start"), await hole.get_attribute("data-end")) == (
            await gap.get_attribute("data-start"),
            await gap.get_attribute("data-end"),
        )
        assert (await hole.bounding_box() or {}).get("width", 0) > 0
        assert "1 gap" in (await line.get_attribute("aria-label") or "")
        # The refined moment draws its per-frame similarity curve.
        curve = page.locator('.answer[data-stream="rec"] .moment-item svg.curve').first
        await curve.wait_for()
        points = (await curve.locator("polyline").get_attribute("points") or "").split()
        assert len(points) >= 4, points
        assert "similarity curve" in (await curve.get_attribute("aria-label") or "")
        # A watch placed now lists the needle already in memory among its past matches.
        await page.fill("#w-threshold", "0.93")
        await page.get_by_role("button", name="Watch", exact=True).click()
        past = page.locator(".watch .alerts li.memory").first
        await past.wait_for()
        assert (await past.inner_text()).startswith("in memory: rec "), await past.inner_text()
        assert "from memory" in await page.locator(".watch .count").inner_text()
        await shot(page, "live-clip-gap")
        assert page.errors == []  # type: ignore[attr-defined]


async def test_media_route_serves_ranges_of_ingested_files_only(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4")
    async with page_on(tmp_path) as (_, url, _page):
        await ingested(url, video)
        base = http_url(url)
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "media/vid", headers={"Range": "bytes=0-99"}) as r:
                assert r.status == 206 and r.headers["Content-Type"] == "video/mp4"
                assert await r.read() == video.read_bytes()[:100]
            for missing in (
                "media/nope",
                "media/..%2Fv.mp4",
                "static/web_routes.py",
                "static/..%2F__init__.py",
            ):
                async with http.get(base + missing) as r:
                    assert r.status == 404, missing
            async with http.get(base + "static/app.js") as r:
                assert r.status == 200 and r.content_type == "text/javascript"


async def test_watch_created_on_the_page_receives_an_alert(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "live.mp4", before=4.0, needle=4.0, after=4.0)
    async with page_on(tmp_path) as (_, url, page):
        await page.goto(http_url(url))
        await page.locator("#conn", has_text="connected").wait_for()
        await page.set_input_files("#q-image", str(NEEDLE))
        await page.locator("#q-preview").wait_for()
        await page.fill("#w-threshold", "0.93")
        await page.get_by_role("button", name="Watch", exact=True).click()
        await page.locator(".watch .what", has_text="watching").wait_for()
        async with client(url) as ws:
            await add(ws, {"id": "live", "kind": "file", "path": str(video), "realtime": True})
        alert = page.locator(".watch .alerts li").first
        await alert.wait_for()
        text = await alert.inner_text()
        assert text.startswith("live "), text
        assert "live match" in await page.locator(".watch .count").inner_text()
        alert_start = float(text.split()[1].split("–")[0])
        assert 3.0 <= alert_start <= 6.0, text
        await page.wait_for_function(
            "() => { const i = document.querySelector('.watch .alerts img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        await shot(page, "watch")
        await page.get_by_role("button", name="cancel watch w1").click()
        await page.locator(".watch.cancelled").wait_for()
        assert page.errors == []  # type: ignore[attr-defined]


async def test_with_a_token_the_page_asks_for_it_and_shows_nothing_before(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4")
    async with page_on(tmp_path, token="s3cret") as (_, url, page):
        async with client(url, token="s3cret") as ws:
            await add(ws, {"id": "vid", "kind": "file", "path": str(video), "realtime": False})
            await until(ws, "vid", lambda s: s["status"] == "done", limit=DONE)
        await page.goto(http_url(url))  # the page itself loads without the token
        await page.locator("#conn", has_text="token needed").wait_for()  # hello refused
        assert await page.locator("#streams li").count() == 0
        await page.fill("#token", "s3cret")
        await page.get_by_role("button", name="Connect").click()
        await page.locator('li[data-stream="vid"] .state.done').wait_for()
        await page.wait_for_function(
            "() => { const i = document.querySelector('li[data-stream=\"vid\"] img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        assert await page.evaluate("sessionStorage.getItem('vmr.token')") == "s3cret"
        start, _ = await ask_needle_and_play(page)  # thumbnails and the file fetched with the token
        assert 3.0 <= start <= 6.0, start
        await shot(page, "token")
        # Over HTTP: the page and its files without the token; no data, thumbnail or clip without it.
        base, bearer = http_url(url), {"Authorization": "Bearer s3cret"}
        async with aiohttp.ClientSession() as http:
            for path in ("", "static/app.js", "static/views.js", "static/style.css"):
                async with http.get(base + path) as r:
                    assert r.status == 200, path
            for path in ("media/vid", "clips/vid.mp4?start=4&end=6", "thumbnails/vid/5.000.jpg", "metrics"):
                async with http.get(base + path) as r:
                    assert r.status == 401, path
                async with http.get(base + path, headers=bearer) as r:
                    assert r.status == 200, path


async def test_clip_of_stored_frames_is_an_mp4_of_the_span(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=4.0, needle=4.0, after=4.0)
    async with page_on(tmp_path) as (_, url, _page):
        await ingested(url, video)
        base = http_url(url)
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "clips/vid.mp4", params={"start": "4", "end": "8"}) as r:
                assert r.status == 200 and r.content_type == "video/mp4"
                body = await r.read()
            for bad in ({"start": "8", "end": "4"}, {"start": "0", "end": "600"}, {"start": "x", "end": "1"}):
                async with http.get(base + "clips/vid.mp4", params=bad) as r:
                    assert r.status == 400, bad
            async with http.get(base + "clips/nope.mp4", params={"start": "0", "end": "1"}) as r:
                assert r.status == 404
    (tmp_path / "clip.mp4").write_bytes(body)
    with av.open(str(tmp_path / "clip.mp4")) as clip:
        frames = [f.to_ndarray(format="rgb24") for f in clip.decode(video=0)]
    assert len(frames) >= 2
    # The clip shows the needle scene (stored frames of 4-8 s), not the background around it.
    with av.open(str(video)) as src:
        decoded = [(f.time, f.to_ndarray(format="rgb24").astype(float)) for f in src.decode(video=0)]
    ref = {t: next(a for ft, a in decoded if ft is not None and ft >= t) for t in (1.0, 6.0, 10.0)}
    mid = np.asarray(Image.fromarray(frames[len(frames) // 2]).resize(ref[6.0].shape[1::-1]), dtype=float)
    dist = {t: float(np.abs(mid - a).mean()) for t, a in ref.items()}
    assert dist[6.0] < min(dist[1.0], dist[10.0]) / 2, dist
