"""Spoken and shown words asked for through the page: real whisper and Tesseract, headless chromium.

The clip is made in ``tmp_path``: espeak-ng says a sentence into noise (the audio track) while
rendered text is on screen (Pillow frames). The page's channel filter sends ``channels`` in the
query; the answer's moment shows which channel supports it and quotes the words it matched.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page

from agent.config import OcrConfig, SpeechConfig
from tests.agent.service.helpers import add, client, request, tiny_settings, until
from tests.agent.service.web.browser import http_url, page_on, shot
from tests.agent.speech_media import make_video_with_sound, needs_espeak, noise_with, spoken

pytest.importorskip("faster_whisper")
pytestmark = [
    pytest.mark.timeout(300),
    needs_espeak,
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed"),
]

SETTLE = 120.0
"""Seconds the speech and OCR workers may take to finish a 16 s clip on a loaded 2-core machine."""


async def ask_words(page: Page, words: str, channel: str) -> None:
    """Type ``words``, tick only ``channel`` in the channel filter, ask, and wait for the refined answer."""
    before = await page.locator("#results").get_attribute("data-query")
    await page.fill("#q-text", words)
    for box in await page.locator("#q-channels input[name=channel]").all():
        await box.set_checked(await box.get_attribute("value") == channel)
    await page.get_by_role("button", name="Ask", exact=True).click()
    await page.wait_for_function(
        "(old) => { const r = document.getElementById('results');"
        " return r.dataset.phase === 'refined' && r.dataset.query !== old; }",
        arg=before,
    )


async def test_spoken_and_shown_words_found_through_the_page(tmp_path: Path) -> None:
    sound = noise_with(16.0, [(9.0, spoken("the truck is waiting at gate four", tmp_path))])
    video = make_video_with_sound(tmp_path / "yard.mp4", sound, shown=[(2.0, 6.0, "ERROR 503")])
    settings = tiny_settings().model_copy(
        update={"speech": SpeechConfig(enabled=True), "ocr": OcrConfig(enabled=True)}
    )
    async with page_on(tmp_path, settings=settings) as (_, url, page):
        async with client(url) as ws:
            await add(ws, {"id": "yard", "kind": "file", "path": str(video), "audio": True})
            await until(ws, "yard", lambda s: s["status"] == "done", limit=SETTLE)
            async with asyncio.timeout(SETTLE):  # the last window may still be with the speech worker
                for n in itertools.count():
                    said = {"type": "query", "id": f"r{n}", "text": "gate four", "channels": ["speech"]}
                    if (await request(ws, said))["moments"]:
                        break
                    await asyncio.sleep(0.5)
        await page.goto(http_url(url))
        await page.locator('li[data-stream="yard"] .state.done').wait_for()
        # The filter offers exactly the service's channels, under their readable names.
        filter_ = page.locator("#q-channels")
        await filter_.wait_for()
        assert await filter_.locator("input[name=channel]").evaluate_all("bs => bs.map(b => b.value)") == [
            "visual",
            "speech",
            "ocr",
        ]
        assert "on-screen text" in await filter_.inner_text()

        await ask_words(page, "gate four", "speech")
        top = page.locator('.answer[data-stream="yard"] .moment-item').first
        assert await top.locator(".badge").evaluate_all("bs => bs.map(b => b.dataset.channel)") == ["speech"]
        quote = await top.locator('q.quote[data-channel="speech"]').inner_text()
        assert "gate" in quote.lower(), quote
        start = float(await top.get_attribute("data-start") or "nan")
        assert abs(start - 9.0) < 0.6, start  # the sentence starts at 9 s
        await shot(page, "spoken")

        await ask_words(page, "error 503", "ocr")
        top = page.locator('.answer[data-stream="yard"] .moment-item').first
        assert await top.locator(".badge").evaluate_all("bs => bs.map(b => b.dataset.channel)") == ["ocr"]
        assert await top.locator('q.quote[data-channel="ocr"]').inner_text() == "ERROR 503"
        start = float(await top.get_attribute("data-start") or "nan")
        assert 2.0 <= start <= 4.5, start  # shown 2-6 s
        await shot(page, "shown")
        assert page.errors == []  # type: ignore[attr-defined]
