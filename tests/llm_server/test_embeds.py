"""Request shape of the SMORE prompt-embeddings mode (vLLM only; checked against a stub)."""

from __future__ import annotations

import pytest
import torch

from llm_server.captions import ScoredCaption
from llm_server.client import LLMClient
from llm_server.embeds import answer_with_embeds, chatml_pieces, decode_tensor, encode_tensor, scale_weights
from llm_server.types import Candidate
from tests.llm_server.recording_server import RecordingServer

CANDS = [Candidate(2, 6, 0.4, "s"), Candidate(10, 14, 0.3, "s")]
CAPS = [ScoredCaption(3.0, "a dog jumps", 0.8, True), ScoredCaption(11.0, "an empty road", 0.2, False)]


def test_tensor_round_trip() -> None:
    t = torch.randn(5, 7)
    assert torch.equal(decode_tensor(encode_tensor(t)), t)


def test_scale_weights_floor_and_max() -> None:
    assert scale_weights([0.8, 0.2, -1.0], floor=0.1) == pytest.approx([1.0, 0.25, 0.1])
    assert scale_weights([]) == []


def test_pieces_scale_only_captions() -> None:
    pieces = chatml_pieces("a dog", CANDS, CAPS, duration=20, top_k=3)
    scaled = {text.strip(): s for text, s in pieces if s != 1.0}
    assert pieces[0][0].startswith("<|im_start|>system") and pieces[-1][0].endswith("assistant\n")
    assert len(scaled) == 1 and any("an empty road" in k for k in scaled)
    assert scaled[next(iter(scaled))] == pytest.approx(0.25)


async def test_prompt_embeds_request_shape() -> None:
    hidden = 16
    embedding = torch.randn(1000, hidden)
    answer = '{"moments": [{"start": 2.5, "end": 6, "confidence": 0.7, "evidence": [3.0]}]}'
    async with RecordingServer(prompt_embeds=True, answer=answer) as srv, LLMClient(srv.base_url) as client:
        result = await answer_with_embeds(
            "a dog", CANDS, duration=20, client=client, embedding=embedding, captions=CAPS
        )
        body = srv.bodies("/v1/completions")[-1]
        token_calls = srv.bodies("/tokenize")
    assert result.answered_by == "llm" and result.moments[0].start == 2.5
    assert body["response_format"]["type"] == "json_schema"
    sent = decode_tensor(body["prompt_embeds"])
    assert sent.ndim == 2 and sent.shape[1] == hidden
    # The stub tokenizes one token per word; every piece was tokenized by the server.
    pieces = chatml_pieces("a dog", CANDS, CAPS, duration=20, top_k=5)
    assert sent.shape[0] == sum(len(text.split()) for text, _ in pieces)
    assert len(token_calls) >= len(pieces)
    road = next(text for text, _ in pieces if "an empty road" in text)
    ids = [sum(map(ord, w)) % 1000 for w in road.split()]
    offset = sum(len(t.split()) for t, _ in pieces[: [p[0] for p in pieces].index(road)])
    assert torch.allclose(sent[offset : offset + len(ids)], embedding[ids] * 0.25)


async def test_disabled_prompt_embeds_falls_back() -> None:
    async with RecordingServer(prompt_embeds=False) as srv, LLMClient(srv.base_url) as client:
        result = await answer_with_embeds(
            "a dog", CANDS, duration=20, client=client, embedding=torch.zeros(1000, 4)
        )
    assert result.moments == CANDS and result.answered_by == "refine"
    assert "prompt_embeds" in result.notes[0]
