"""What an OpenAI-compatible server offers, found by probing rather than assumed.

Each probe is a short unstreamed request: the model list, a tokenizer endpoint
(vLLM ``/tokenize``, llama-cpp-python ``/extras/tokenize``), a json_schema
``response_format``, images (two solid colours the model must name), and
vLLM's prompt embeddings (a payload that fails to decode, so the engine never
sees it; the error says whether ``--enable-prompt-embeds`` is on).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from llm_server.errors import BadAnswerError, LLMServerError, ServerUnavailableError
from llm_server.types import Completion

_PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a server was seen to support."""

    model: str
    owned_by: str = ""
    vision: bool = False
    json_schema: bool = False
    """``response_format: {"type": "json_schema"}`` is honoured."""
    tokenize_path: str | None = None
    """``/tokenize`` (vLLM) or ``/extras/tokenize`` (llama-cpp-python), if any."""
    prompt_embeds: bool = False
    chat_overhead_tokens: int = 16
    """Tokens the chat template adds around one user message."""
    notes: list[str] = field(default_factory=list)


class ProbeClient(Protocol):
    """What probing needs of a client (:class:`llm_server.client.LLMClient` has it).

    A protocol rather than an import: the client caches the probe's result, so
    a direct import would make the two modules import each other.
    """

    base_url: str
    model: str | None

    async def models(self) -> list[dict[str, Any]]: ...

    async def count_tokens_at(self, path: str, text: str) -> int: ...

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any: ...

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        response_format: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        stream: bool = True,
    ) -> Completion: ...


async def probe(client: ProbeClient) -> Capabilities:
    """Probe what the server behind ``client`` offers (several short requests)."""
    models = await client.models()
    if not models:
        raise ServerUnavailableError(f"LLM server at {client.base_url} serves no model")
    chosen = next((m for m in models if m.get("id") == client.model), models[0])
    client.model = str(chosen.get("id"))
    owned_by = str(chosen.get("owned_by", ""))
    notes: list[str] = []
    tokenize_path = await _probe_tokenizer(client, notes)
    # Plain string content: some chat templates (Qwen's in llama-cpp-python) fail on part lists.
    base = await _probe_chat(client, "Reply.", notes)
    json_schema = await _probe_json_schema(client, notes)
    vision = await _probe_vision(client, notes)
    overhead = 16
    if base is not None and tokenize_path is not None:
        counted = await client.count_tokens_at(tokenize_path, "Reply.")
        overhead = max(0, base.usage.prompt_tokens - counted)
    embeds = await _probe_prompt_embeds(client, owned_by, notes)
    return Capabilities(
        model=client.model,
        owned_by=owned_by,
        vision=vision,
        json_schema=json_schema,
        tokenize_path=tokenize_path,
        prompt_embeds=embeds,
        chat_overhead_tokens=overhead,
        notes=notes,
    )


async def _probe_tokenizer(client: ProbeClient, notes: list[str]) -> str | None:
    for path in ("/tokenize", "/extras/tokenize"):
        try:
            await client.count_tokens_at(path, "probe")
            return path
        except LLMServerError as exc:
            notes.append(f"no tokenizer at {path}: {exc}")
    return None


async def _probe_chat(
    client: ProbeClient, content: str | list[dict[str, Any]], notes: list[str], max_tokens: int = 1
) -> Completion | None:
    try:
        return await client.chat([{"role": "user", "content": content}], max_tokens=max_tokens, stream=False)
    except (BadAnswerError, ServerUnavailableError) as exc:
        notes.append(f"chat probe failed: {exc}")
        return None


async def _probe_json_schema(client: ProbeClient, notes: list[str]) -> bool:
    fmt = {"type": "json_schema", "json_schema": {"name": "probe", "schema": _PROBE_SCHEMA}}
    try:
        out = await client.chat(
            [{"role": "user", "content": 'Answer {"ok": true}.'}],
            max_tokens=12,
            response_format=fmt,
            stream=False,
        )
        return isinstance(json.loads(out.text).get("ok"), bool)
    except (BadAnswerError, ValueError, AttributeError) as exc:
        notes.append(f"json_schema response_format not honoured: {exc}")
        return False


async def _probe_vision(client: ProbeClient, notes: list[str]) -> bool:
    # A text-only server rejects the image part, drops it, or renders it as
    # text; only a model that sees can name the colour of two solid pictures.
    for colour in ("red", "blue"):
        image = {"type": "image_url", "image_url": {"url": _solid_png_uri(colour)}}
        question = {"type": "text", "text": "What colour is this image? Answer with one word."}
        out = await _probe_chat(client, [image, question], notes, max_tokens=4)
        if out is None or colour not in out.text.lower():
            notes.append(f"vision probe: no {colour} seen")
            return False
    return True


async def _probe_prompt_embeds(client: ProbeClient, owned_by: str, notes: list[str]) -> bool:
    if owned_by != "vllm":
        return False
    # A payload that fails to decode is rejected by the frontend before the
    # engine sees it; the message says whether the feature is switched on.
    try:
        await client.post_json(
            "/v1/completions", {"model": client.model, "prompt_embeds": "!", "max_tokens": 1}
        )
    except BadAnswerError as exc:
        text = str(exc).lower().replace("_", "-")
        enabled = "enable-prompt-embeds" not in text
        notes.append(f"prompt_embeds probe: {exc}")
        return enabled
    return True


def _solid_png_uri(colour: str) -> str:
    rgb = {"red": (255, 0, 0), "blue": (0, 0, 255)}[colour]
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
