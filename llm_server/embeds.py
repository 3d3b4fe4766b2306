"""SMORE-faithful prompt embeddings for vLLM (``vllm serve --enable-prompt-embeds``).

Instead of text, the prompt is sent as token embeddings in which every caption's
tokens are scaled by its importance S_q (normalised to ``[floor, 1]``), so a
weak caption speaks quietly rather than being cut. The embedding matrix is the
served model's input embedding table (``model.get_input_embeddings().weight``
from transformers); it only makes sense on the GPU box that serves that model.

vLLM's Completions API applies no chat template to ``prompt_embeds``, so the
ChatML template (Qwen2.5 / Qwen2.5-VL) is embedded here as text.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import torch

from llm_server.answer import fallback, to_moments
from llm_server.captions import ScoredCaption
from llm_server.client import LLMClient
from llm_server.errors import LLMServerError, ServerUnavailableError
from llm_server.prompt import SYSTEM, render_lines
from llm_server.protocol import Answer, parse, schema_of
from llm_server.types import Candidate, StreamCoverage, StreamResult


def encode_tensor(tensor: torch.Tensor) -> str:
    """vLLM's wire format for ``prompt_embeds``: base64 of ``torch.save`` bytes."""
    buf = io.BytesIO()
    torch.save(tensor.detach().contiguous().cpu(), buf)
    return base64.b64encode(buf.getvalue()).decode()


def decode_tensor(data: str) -> torch.Tensor:
    """Inverse of :func:`encode_tensor` (safe load: tensors only)."""
    tensor = torch.load(io.BytesIO(base64.b64decode(data)), weights_only=True)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("payload is not a tensor")
    return tensor


def scale_weights(weights: Sequence[float], floor: float = 0.1) -> list[float]:
    """Map S_q values to ``[floor, 1]`` (max -> 1) so no caption vanishes entirely."""
    if not weights:
        return []
    top = max(weights)
    if top <= 0:
        return [floor for _ in weights]
    return [max(floor, min(1.0, w / top)) for w in weights]


def weighted_embeddings(
    pieces: Sequence[tuple[Sequence[int], float]], embedding: torch.Tensor
) -> torch.Tensor:
    """Concatenate ``embedding[ids] * scale`` over pieces: shape (tokens, hidden)."""
    rows = [embedding[torch.as_tensor(list(ids), dtype=torch.long)] * scale for ids, scale in pieces if ids]
    if not rows:
        raise ValueError("no tokens to embed")
    return torch.cat(rows, dim=0)


def chatml_pieces(
    query: str,
    candidates: Sequence[Candidate],
    captions: Sequence[ScoredCaption],
    *,
    duration: float,
    top_k: int,
    floor: float = 0.1,
) -> list[tuple[str, float]]:
    """The templated prompt as (text, scale) pieces; captions scaled by normalised S_q."""
    lines = render_lines(query, candidates, captions, duration=duration, top_k=top_k)
    scales = iter(scale_weights([w for _, w in lines if w is not None], floor))
    pieces = [(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n", 1.0)]
    for text, weight in lines:
        pieces.append((text + "\n", 1.0 if weight is None else next(scales)))
    pieces.append(("<|im_end|>\n<|im_start|>assistant\n", 1.0))
    return pieces


async def embeds_request(
    client: LLMClient,
    pieces: Sequence[tuple[str, float]],
    embedding: torch.Tensor,
) -> str:
    """Tokenize each piece with the server's tokenizer and return the base64 payload."""
    ids = [await client.tokenize(text) for text, _ in pieces]
    tensor = weighted_embeddings([(i, s) for i, (_, s) in zip(ids, pieces, strict=True)], embedding)
    return encode_tensor(tensor)


async def answer_with_embeds(
    query: str,
    candidates: Sequence[Candidate],
    *,
    duration: float,
    client: LLMClient,
    embedding: torch.Tensor,
    captions: Sequence[ScoredCaption] = (),
    max_tokens: int = 192,
    top_k: int = 5,
    coverage: StreamCoverage | None = None,
) -> StreamResult:
    """Like :func:`llm_server.answer.answer`, sending S_q-scaled caption embeddings.

    Falls back to the proposals when the server lacks prompt embeddings or fails.
    """
    if not candidates:
        return fallback(candidates, "no candidates to answer from", coverage=coverage)
    try:
        caps = await client.capabilities()
        if not caps.prompt_embeds:
            raise ServerUnavailableError("the server does not accept prompt_embeds (--enable-prompt-embeds)")
        cands = sorted(candidates, key=lambda m: -m.score)
        pieces = chatml_pieces(query, cands, captions, duration=duration, top_k=top_k)
        payload = await embeds_request(client, pieces, embedding)
        fmt = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": schema_of(Answer)}}
        out = await client.completion(
            prompt_embeds=payload, max_tokens=max_tokens, extra={"response_format": fmt}
        )
        parsed = parse(Answer, out.text, duration=duration)
    except LLMServerError as exc:
        return fallback(candidates, f"{type(exc).__name__}: {exc}", coverage=coverage)
    if not parsed.moments:
        return fallback(candidates, "the LLM returned no moment", coverage=coverage)
    note = f"llm tokens: prompt={out.usage.prompt_tokens} completion={out.usage.completion_tokens}"
    return StreamResult(to_moments(parsed, cands, duration=duration)[:top_k], coverage, "llm", False, [note])
