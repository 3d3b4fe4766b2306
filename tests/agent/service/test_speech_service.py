"""Spoken and shown words asked for over the websocket: a file stream with sound and text, real whisper and Tesseract."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from agent.config import OcrConfig, SpeechConfig
from tests.agent.service.helpers import add, client, request, running, tiny_settings, until
from tests.agent.speech_media import make_video_with_sound, needs_espeak, noise_with, spoken

pytest.importorskip("faster_whisper")
pytestmark = [pytest.mark.timeout(240), needs_espeak]


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed")
async def test_spoken_and_shown_words_are_found_over_the_websocket(tmp_path: Path) -> None:
    sound = noise_with(16.0, [(9.0, spoken("the truck is waiting at gate four", tmp_path))])
    video = make_video_with_sound(tmp_path / "yard.mp4", sound, shown=[(2.0, 6.0, "ERROR 503")])
    update = {"speech": SpeechConfig(enabled=True), "ocr": OcrConfig(enabled=True)}
    settings = tiny_settings().model_copy(update=update)
    async with running(tmp_path, settings) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "yard", "kind": "file", "path": str(video), "audio": True})
        done = await until(ws, "yard", lambda s: s["status"] not in ("starting", "running"), limit=120)
        assert done["status"] == "done", done
        query = {"type": "query", "text": "gate four", "streams": ["yard"], "channels": ["speech"]}
        async with asyncio.timeout(120):
            n = 0
            while True:  # the last window may still be with the speech worker
                n += 1
                answer = await request(ws, {**query, "id": f"q{n}"})
                if answer.get("moments"):
                    break
                await asyncio.sleep(0.5)
        top = answer["moments"][0]
        assert top["channels"] == ["speech"] and "gate" in top["quotes"]["speech"].lower(), top
        assert abs(top["start"] - 9.0) < 0.6 and not top["below_threshold"]
        # Visual only: the same words find no quote.
        visual = await request(ws, {**query, "id": "v", "channels": ["visual"]})
        assert all(not m["quotes"] for m in visual["moments"])
        # Shown, not said.
        shown = await request(ws, {**query, "id": "o", "text": "error 503", "channels": ["ocr"]})
        top = shown["moments"][0]
        assert top["channels"] == ["ocr"] and top["quotes"] == {"ocr": "ERROR 503"}, top
        assert 2.0 <= top["start"] <= 4.5 and not top["below_threshold"]
