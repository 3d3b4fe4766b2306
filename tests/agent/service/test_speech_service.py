"""A spoken phrase asked for over the websocket: a file stream with sound, the speech channel on, real whisper."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.config import SpeechConfig
from agent.service.config import ServiceConfig
from agent.service.pipeline import Service
from agent.service.server import Server
from tests.agent.service.helpers import add, client, request, tiny_settings, until
from tests.agent.speech_media import make_video_with_sound, needs_espeak, noise_with, spoken

pytest.importorskip("faster_whisper")
pytestmark = [pytest.mark.timeout(240), needs_espeak]


async def test_a_spoken_phrase_is_found_over_the_websocket(tmp_path: Path) -> None:
    sound = noise_with(16.0, [(9.0, spoken("the truck is waiting at gate four", tmp_path))])
    video = make_video_with_sound(tmp_path / "yard.mp4", sound)
    settings = tiny_settings().model_copy(update={"speech": SpeechConfig(enabled=True)})
    cfg = ServiceConfig(host="127.0.0.1", port=0, index=tmp_path / "index")
    async with Service(cfg, settings) as svc:
        await svc.start()
        server = Server(svc.serving, cfg)
        port = await server.start()
        try:
            async with client(f"ws://127.0.0.1:{port}") as ws:
                await add(ws, {"id": "yard", "kind": "file", "path": str(video), "audio": True})
                done = await until(
                    ws, "yard", lambda s: s["status"] not in ("starting", "running"), limit=120
                )
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
        finally:
            await server.close()
