"""A real OpenAI-compatible HTTP server (aiohttp, loopback, port 0) that records requests.

It stands in for vLLM where no GPU exists, to check request *shapes* (images,
json_schema response_format, prompt_embeds) and the client's failure handling.
Replies are scripted per test; the HTTP, SSE streaming and disconnects are real.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image


@dataclass
class RecordingServer:
    """Scripted OpenAI-compatible server; start with ``async with``."""

    answer: str = '{"moments": []}'
    """Text of every non-probe answer (unless ``reply`` is given)."""
    reply: Callable[[dict[str, Any]], str] | None = None
    json_schema: bool = True
    """Answer the structured-output probe as a server that honours json_schema."""
    owned_by: str = "vllm"
    model: str = "stub-model"
    vision: bool = False
    tokenizer: bool = True
    prompt_embeds: bool = False
    fail_first: list[int] = field(default_factory=list)
    """HTTP statuses returned (in order) before requests succeed."""
    chunk_delay: float = 0.0
    endless: bool = False
    """Stream until max_tokens or until the client goes away."""
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a generation starts streaming."""
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> RecordingServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/tokenize", self._tokenize)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """Recorded JSON bodies sent to ``path``."""
        return [b for p, b in self.requests if p == path]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "owned_by": self.owned_by}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("/tokenize", body))
        if not self.tokenizer:
            return web.json_response({"error": "not found"}, status=404)
        tokens = [sum(map(ord, w)) % 1000 for w in str(body.get("prompt", "")).split()]
        return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": 4096})

    def _prompt_tokens(self, body: dict[str, Any]) -> int:
        text = json.dumps(body.get("messages") or body.get("prompt") or "")
        images = text.count('"image_url"')
        return len(text.split()) + 100 * images

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.fail_first:
            status = self.fail_first.pop(0)
            return web.json_response({"error": f"scripted {status}"}, status=status)
        if "prompt_embeds" in body and not self.prompt_embeds:
            return web.json_response(
                {"error": {"message": "You must set `--enable-prompt-embeds` to input `prompt_embeds`."}},
                status=400,
            )
        if "prompt_embeds" in body and body["prompt_embeds"] == "!":
            return web.json_response({"error": {"message": "Incorrect padding (base64)"}}, status=400)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if not body.get("stream"):
                return self._whole(request, body)
            return await self._stream(request, body)
        finally:
            self.inflight -= 1

    def _answer_for(self, body: dict[str, Any]) -> str:
        colour = _colour_question(body)
        if colour is not None:
            return colour if self.vision else "green"
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema" and fmt.get("json_schema", {}).get("name") == "probe":
            return '{"ok": true}' if self.json_schema else "sure"
        return self.reply(body) if self.reply is not None else self.answer

    def _whole(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        text = self._answer_for(body)[: 4 * int(body.get("max_tokens") or 1_000_000)]
        chat = request.path.endswith("chat/completions")
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        usage = {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": max(1, len(text) // 4)}
        return web.json_response({"choices": [choice], "usage": usage})

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.started.set()
        chat = request.path.endswith("chat/completions")
        text = self._answer_for(body)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]
        sent = 0
        try:
            while True:
                piece = pieces[sent] if sent < len(pieces) else "x"
                choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                sent += 1
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if sent >= len(pieces) and not self.endless:
                    break
                if sent >= int(body.get("max_tokens") or 1_000_000):
                    break
            usage = {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": sent}
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
            await resp.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp


def image_colours(body: dict[str, Any]) -> list[str]:
    """Dominant channel ("red", "green", "blue") of every image in a chat request."""
    names = ("red", "green", "blue")
    found: list[str] = []
    for msg in body.get("messages") or []:
        content = msg.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                pixel = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
                assert isinstance(pixel, tuple)
                found.append(names[max(range(3), key=lambda c: pixel[c])])
    return found


def vision_reply(body: dict[str, Any]) -> str:
    """What a VLM would say: the QA filter and captions follow the pictures' colours."""
    colours = image_colours(body)
    text = json.dumps(body["messages"])
    if not colours:
        return "ok"  # capability probes
    if "Do these frames show" in text:
        return json.dumps({"present": any(c in text for c in colours)})
    if "relates to" in text:
        return json.dumps({"caption": f"{colours[0]} car matching the query"})
    return json.dumps({"caption": f"a {colours[0]} frame"})


def _colour_question(body: dict[str, Any]) -> str | None:
    """The colour of the image in a "What colour" probe, seen as a vision model would."""
    if "What colour" not in json.dumps(body.get("messages") or []):
        return None
    colours = image_colours(body)
    return colours[0] if colours else None
