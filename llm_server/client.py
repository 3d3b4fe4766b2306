"""Async client for any OpenAI-compatible server (vLLM, llama-cpp-python, others).

Built on httpx (already a dependency; the ``openai`` SDK would add little here
and hides the HTTP stream we need for cancellation). Generations are *streamed*
by default: cancelling the awaiting task closes the HTTP stream, which is how
both vLLM and llama-cpp-python learn that the client went away and stop
generating; a non-streamed request would keep the server busy to the end. Only
short probes go unstreamed, because llama-cpp-python reports token usage only
in non-streamed answers (it ignores ``stream_options``).

What a server offers is probed, never assumed (:meth:`LLMClient.capabilities`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from llm_server.capabilities import Capabilities, probe
from llm_server.errors import BadAnswerError, ServerTimeoutError, ServerUnavailableError
from llm_server.types import Completion, Usage

TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


class LLMClient:
    """Async OpenAI-compatible client with retries, a concurrency limit and timeouts.

    Use as ``async with LLMClient(url) as client``. ``timeout`` bounds a whole
    request (all retries included) and raises ServerTimeoutError; connection
    failures that outlive the retries raise ServerUnavailableError; HTTP errors
    that are not transient raise BadAnswerError at once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.25,
        concurrency: int = 2,
        api_key: str | None = None,
    ) -> None:
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("concurrency >= 1, retries >= 0 and timeout > 0 are required")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._caps: Capabilities | None = None
        self._probe_lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._http.aclose()

    # ---------------------------------------------------------------- requests

    async def get_json(self, path: str) -> Any:
        """GET ``path`` and decode JSON, with retries and the total timeout."""
        return await self._request_json("GET", path, None)

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` to ``path`` and decode JSON, with retries and the total timeout."""
        return await self._request_json("POST", path, body)

    async def _request_json(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        async def once() -> Any:
            resp = await self._http.request(method, path, json=body)
            await _raise_for_status(resp)
            return _decode(resp.content)

        return await self._with_policy(once)

    async def _with_policy(self, call: Any) -> Any:
        """Run ``call`` under the slot limit, total timeout and retry policy."""
        if self._closed:
            raise ServerUnavailableError("LLM client is closed")
        try:
            async with self._slots, asyncio.timeout(self.timeout):
                return await self._retrying(call)
        except TimeoutError as exc:
            raise ServerTimeoutError(f"LLM server gave no answer within {self.timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise ServerTimeoutError(f"LLM server timed out: {exc!r}") from exc

    async def _retrying(self, call: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await call()
            except _Transient as exc:
                if attempt == self.retries:
                    raise ServerUnavailableError(f"LLM server busy or failing: {exc}") from exc
                delay = exc.retry_after or self.backoff * 2**attempt
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt == self.retries:
                    raise ServerUnavailableError(
                        f"LLM server at {self.base_url} unreachable: {exc!r}"
                    ) from exc
                delay = self.backoff * 2**attempt
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        response_format: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        stream: bool = True,
    ) -> Completion:
        """One chat completion; streamed (the default) so that cancellation reaches the server.

        A streamed answer from a server that reports no usage carries
        ``Usage(0, chunks)``; see :attr:`Completion.usage_reported`.
        """
        body: dict[str, Any] = {
            "model": await self._model_name(),
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if response_format is not None:
            body["response_format"] = dict(response_format)
        body.update(extra or {})
        if not stream:
            return await self._whole("/v1/chat/completions", body)
        body.update(stream=True, stream_options={"include_usage": True})
        return await self._stream("/v1/chat/completions", body)

    async def completion(
        self,
        *,
        prompt: str | None = None,
        prompt_embeds: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        extra: Mapping[str, Any] | None = None,
    ) -> Completion:
        """A plain completion; ``prompt_embeds`` is vLLM's base64 ``torch.save`` tensor."""
        body: dict[str, Any] = {
            "model": await self._model_name(),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if prompt is not None:
            body["prompt"] = prompt
        if prompt_embeds is not None:
            body["prompt_embeds"] = prompt_embeds
        body.update(extra or {})
        return await self._stream("/v1/completions", body)

    async def _whole(self, path: str, body: Mapping[str, Any]) -> Completion:
        data = await self.post_json(path, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            u = data.get("usage") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise BadAnswerError(f"malformed completion: {str(data)[:300]}") from exc
        usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        return Completion(text or "", usage, choice.get("finish_reason"), usage_reported=bool(u))

    async def _stream(self, path: str, body: Mapping[str, Any]) -> Completion:
        async def once() -> Completion:
            # Leaving this block (normally, by error or by cancellation) closes the
            # response, and with it the connection the server is streaming into.
            async with self._http.stream("POST", path, json=body) as resp:
                await _raise_for_status(resp)
                return await _collect(_sse_events(resp))

        result: Completion = await self._with_policy(once)
        return result

    # ------------------------------------------------------------ capabilities

    async def _model_name(self) -> str:
        if self.model is None:
            models = await self.models()
            if not models:
                raise ServerUnavailableError(f"LLM server at {self.base_url} serves no model")
            self.model = str(models[0].get("id", ""))
        return self.model

    async def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the models the server serves."""
        data = await self.get_json("/v1/models")
        items = data.get("data") if isinstance(data, dict) else None
        return [m for m in items or [] if isinstance(m, dict)]

    async def count_tokens(self, text: str) -> int | None:
        """Exact token count from the server's tokenizer, or None if it has none."""
        caps = await self.capabilities()
        if caps.tokenize_path is None:
            return None
        return await self.count_tokens_at(caps.tokenize_path, text)

    async def tokenize(self, text: str) -> list[int]:
        """Token ids from the server's tokenizer (ServerUnavailableError if it has none)."""
        caps = await self.capabilities()
        if caps.tokenize_path is None:
            raise ServerUnavailableError("the LLM server exposes no tokenizer endpoint")
        data = await self.post_json(caps.tokenize_path, self._tokenize_body(caps.tokenize_path, text))
        return [int(t) for t in data["tokens"]]

    def _tokenize_body(self, path: str, text: str) -> dict[str, Any]:
        if path == "/tokenize":
            return {"model": self.model, "prompt": text, "add_special_tokens": False}
        return {"input": text}

    async def count_tokens_at(self, path: str, text: str) -> int:
        """Token count of ``text`` from the tokenizer endpoint at ``path``."""
        data = await self.post_json(path, self._tokenize_body(path, text))
        if isinstance(data, dict) and isinstance(data.get("count"), int):
            return int(data["count"])
        if isinstance(data, dict) and isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        raise BadAnswerError(f"unexpected tokenizer response: {str(data)[:200]}")

    async def capabilities(self, *, refresh: bool = False) -> Capabilities:
        """Probe the server once (cached): model, tokenizer, structured outputs, vision, embeds."""
        async with self._probe_lock:  # concurrent first callers share one probe
            if self._caps is None or refresh:
                self._caps = await probe(self)
            return self._caps


class _Transient(Exception):
    def __init__(self, status: int, retry_after: float | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.retry_after = retry_after


async def _raise_for_status(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    await resp.aread()
    text = resp.text
    if resp.status_code in TRANSIENT_STATUS:
        raise _Transient(resp.status_code, _retry_after(resp), text)
    raise BadAnswerError(f"LLM server refused the request: HTTP {resp.status_code}: {text[:500]}")


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return min(10.0, float(raw)) if raw else None
    except ValueError:
        return None


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content)
    except json.JSONDecodeError as exc:
        raise BadAnswerError(f"LLM server sent non-JSON: {content[:200]!r}") from exc


async def _sse_events(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = _decode(data.encode())
        if isinstance(event, dict) and "error" in event:
            raise BadAnswerError(f"LLM server error mid-stream: {str(event['error'])[:300]}")
        if isinstance(event, dict):
            yield event


async def _collect(events: AsyncIterator[dict[str, Any]]) -> Completion:
    parts: list[str] = []
    usage: Usage | None = None
    finish: str | None = None
    chunks = 0
    async for event in events:
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            piece = delta.get("content") if "delta" in choice else choice.get("text")
            if piece:
                parts.append(piece)
                chunks += 1
            finish = choice.get("finish_reason") or finish
        if isinstance(event.get("usage"), dict):
            u = event["usage"]
            usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    # Servers that ignore include_usage still send one token per chunk.
    return Completion("".join(parts), usage or Usage(0, chunks), finish, usage_reported=usage is not None)
