"""Watches on a phrase spoken or shown, over the websocket: real whisper, Tesseract, a file with sound and text.

Also the text channels' size and lag in ``/metrics`` once the stream is done.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.config import OcrConfig, SpeechConfig
from tests.agent.service.helpers import client, metric_samples, request, running, tiny_settings, wait_for
from tests.agent.speech_media import make_video_with_sound, needs_espeak, noise_with, spoken

pytest.importorskip("faster_whisper")
pytestmark = [
    pytest.mark.timeout(240),
    needs_espeak,
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed"),
]

WATCHES = {
    "said": {"text": "when is gate four mentioned", "channels": ["speech"]},
    "shown": {"text": "error 503", "channels": ["ocr"]},
    "never": {"text": "north entrance", "channels": ["speech", "ocr"]},
}


async def _watch(ws: Any, wid: str, fields: dict[str, Any]) -> None:
    watching = await request(ws, {"type": "watch", "id": wid, "backward": False, **fields})
    # A text-only watch needs no calibration on anchors: it matches from the first span on.
    assert watching["type"] == "watching" and watching["calibrating"] is False, watching


async def test_watches_fire_on_a_phrase_spoken_or_shown(tmp_path: Path) -> None:
    sound = noise_with(16.0, [(9.0, spoken("the truck is waiting at gate four", tmp_path))])
    video = make_video_with_sound(tmp_path / "yard.mp4", sound, shown=[(2.0, 6.0, "ERROR 503")])
    update = {"speech": SpeechConfig(enabled=True), "ocr": OcrConfig(enabled=True)}
    settings = tiny_settings().model_copy(update=update)
    async with running(tmp_path, settings) as (svc, url):
        async with client(url) as ws:
            for wid, fields in WATCHES.items():
                await _watch(ws, wid, fields)
            spec = {"id": "yard", "kind": "file", "path": str(video), "audio": True}
            await ws.send(json.dumps({"type": "streams.add", "id": "add", "stream": spec}))
            fired: dict[str, dict[str, Any]] = {}

            def seen(event: dict[str, Any]) -> bool:
                if event.get("type") in ("moment", "moment.update"):
                    fired.setdefault(event["id"], event)
                return {"said", "shown"} <= fired.keys()

            await wait_for(ws, seen, limit=150)
        said, shown = fired["said"], fired["shown"]
        # One complete match per span: opened and closed in one event, quoted, one channel.
        assert said["type"] == "moment" and said["closed"] is True, said
        top = said["moment"]
        assert top["channels"] == ["speech"] and "gate" in top["quotes"]["speech"].lower(), top
        assert abs(top["start"] - 9.0) < 0.6 and top["score"] == 1.0 and top["stream"] == "yard"
        top = shown["moment"]
        assert top["channels"] == ["ocr"] and top["quotes"] == {"ocr": "ERROR 503"}, top
        assert 2.0 <= top["start"] <= 4.5
        assert "never" not in fired  # words neither said nor shown

        # Size and lag per text channel, once everything was transcribed and read.
        async with asyncio.timeout(60):
            while True:
                samples = metric_samples((await svc.serving.render_metrics(0)).decode())
                lags = {
                    ch: samples["vmr_channel_lag_seconds", (("channel", ch), ("stream", "yard"))]
                    for ch in ("speech", "ocr")
                }
                if max(lags.values()) < 1.0:
                    break
                await asyncio.sleep(0.5)
        for ch in ("speech", "ocr"):
            labels = (("channel", ch), ("stream", "yard"))
            assert samples["vmr_channel_spans", labels] >= 1
            assert samples["vmr_channel_bytes", labels] > 0
