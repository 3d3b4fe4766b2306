"""Remake the README's screenshot of the web page (``docs/web-page.png``) from the current page.

The scene is the page tests' (``tests/agent/service/web/``): a real service on a loopback
port, a recorder's segment folder whose 8-10 s segment is missing (the coverage bar's gap),
the needle photo asked as an image query (its refined moment, with evidence, channel badges
and similarity curve, playing as a clip of stored frames), and a watch placed afterwards (its
past matches in memory). With Tesseract installed the on-screen text channel is on, so the
page's channel filter shows. Debian's chromium, driven by Playwright with ``executable_path``.

    python -m bench.page_screenshot

The prescreen encoder is ``tiny-random``: the page says its scores are meaningless, and the
picture shows the page, not retrieval quality. The PNG is reduced to a 256-colour palette to
stay small (:data:`MAX_BYTES`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from agent.channels.refine import MAX_REFINE_BUDGET_S
from agent.config import IndexConfig, OcrConfig, Settings

OUT = Path(__file__).resolve().parents[1] / "docs" / "web-page.png"
MAX_BYTES = 200_000
"""The README's image stays under this many bytes."""
READY_S = 120.0
"""Seconds the segment folder may take to be ingested."""
WATCH_THRESHOLD = 0.93
"""The watch's cosine threshold (the page test's): the needle already in memory passes it."""


def scene_settings(ocr: bool) -> Settings:
    """The page tests' settings with a 1.5 s gap threshold (the missing 2 s segment is a gap)."""
    from tests.agent.service.helpers import tiny_settings

    base = tiny_settings()
    index = IndexConfig(**{**base.index.model_dump(), "gap_seconds": 1.5})
    # Words only: the sentence model is not needed for a picture of the page.
    return base.model_copy(update={"index": index, "ocr": OcrConfig(enabled=ocr, semantic=False)})


async def shoot(work: Path, ocr: bool) -> bytes:
    """Drive the page through the scene and return a full-page PNG screenshot."""
    from tests.agent.service.helpers import (
        NEEDLE,
        add,
        all_segments_in,
        client,
        needle_b64,
        refined,
        segments_with_a_missing_one,
        until,
    )
    from tests.agent.service.web.browser import http_url, page_on

    folder = segments_with_a_missing_one(work / "rec")
    async with page_on(work, settings=scene_settings(ocr)) as (_, url, page):
        async with client(url) as ws:
            await add(ws, {"id": "rec", "kind": "segments", "path": str(folder)})
            await until(ws, "rec", all_segments_in, limit=READY_S)
            # Refine once without a tight budget: the page's query (default budget, 1 s) then
            # finds every frame embedding cached and is refined however loaded the machine is.
            warm = {"type": "query", "id": "warm", "image": needle_b64(), "budget": MAX_REFINE_BUDGET_S}
            await refined(ws, warm)
        await page.goto(http_url(url))
        await page.locator('li[data-stream="rec"] .coverage .span.gap').wait_for()
        await page.set_input_files("#q-image", str(NEEDLE))
        await page.locator("#q-preview").wait_for()
        await page.get_by_role("button", name="Ask", exact=True).click()
        await page.locator('#results[data-phase="refined"]').wait_for(state="attached")
        best = page.locator('.answer[data-stream="rec"] .timeline .moment').first
        await best.wait_for()
        await page.locator('.answer[data-stream="rec"] .moment-item svg.curve').first.wait_for()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('.evidence img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        await best.click()
        await page.wait_for_function("() => document.getElementById('player').readyState >= 2")
        await page.fill("#w-threshold", str(WATCH_THRESHOLD))
        await page.get_by_role("button", name="Watch", exact=True).click()
        await page.locator(".watch .alerts li.memory").first.wait_for()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('img')].every(i => !i.src || (i.complete && i.naturalWidth > 0))"
        )
        # The same frame every run: the player stopped one second into the moment.
        await page.evaluate(
            "async () => { const v = document.getElementById('player'); v.pause();"
            " const seeked = new Promise(ok => v.addEventListener('seeked', ok, {once: true}));"
            " v.currentTime = Math.min(1, (v.duration || 2) / 2); await seeked; }"
        )
        await page.mouse.move(0, 0)  # no hover highlight
        errors: list[Any] = getattr(page, "errors", [])
        if errors:
            raise RuntimeError(f"the page reported errors: {errors}")
        return await page.screenshot(full_page=True)


def small_png(png: bytes) -> bytes:
    """``png`` reduced to a 256-colour palette (text and flat UI survive it; photos dither)."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the page tests' scene and browser
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-ocr", action="store_true", help="leave the on-screen text channel off")
    a = p.parse_args(argv)
    ocr = not a.no_ocr and shutil.which("tesseract") is not None
    if not ocr and not a.no_ocr:
        print("tesseract not found: the on-screen text channel is off (no channel filter shown)")
    with tempfile.TemporaryDirectory() as tmp:
        png = small_png(asyncio.run(shoot(Path(tmp), ocr)))
    if len(png) > MAX_BYTES:
        raise SystemExit(f"screenshot is {len(png)} bytes, over {MAX_BYTES}: not written")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(png)
    print(f"wrote {a.out} ({len(png)} bytes)")


if __name__ == "__main__":
    main()
