"""The LLM stage as an application uses it: visual search results in, LLM answers out.

For each stream's visual (CLIP) result, :class:`LLMStage` (when the server accepts
images) captions the candidate regions' stored frames with query-guided
prompts, scores them with S_q, shows the evidence frames, and asks the LLM to
choose and refine moments (:func:`llm_server.answer.answer`). Without vision
(the embedded llama.cpp model) the prompt lists the candidates with their
CLIP scores. Transcript and on-screen text spans the caller passes
(:func:`llm_server.captions.text_captions`, already weighted by S_q) join the
captions with or without vision. Any LLM failure returns the CLIP result
unchanged with a note, and ``answered_by`` always says which path answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType

from llm_server.answer import answer
from llm_server.captions import CaptionCache, Captioner, ScoredCaption
from llm_server.client import LLMClient
from llm_server.errors import LLMConfigError, LLMServerError
from llm_server.prompt import FrameImage
from llm_server.types import FrameSource, StageConfig, StreamResult, TextImageEncoder
from llm_server.understanding import understand_or_heuristic


class LLMStage:
    """Owns one LLM client; answers text queries over visual-search candidates.

    Raises LLMConfigError when ``cfg.url`` is not set.
    """

    def __init__(self, cfg: StageConfig, encoder: TextImageEncoder) -> None:
        if not cfg.url:
            raise LLMConfigError("LLMStage needs StageConfig.url")
        self.cfg = cfg
        self.client = LLMClient(cfg.url, model=cfg.model, timeout=cfg.timeout, api_key=cfg.api_key)
        self.captioner = Captioner(
            self.client, encoder, mode="storage", cache=CaptionCache(), a1=cfg.a1, a2=cfg.a2
        )
        self._closed = False

    async def __aenter__(self) -> LLMStage:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client (idempotent)."""
        if not self._closed:
            self._closed = True
            await self.client.__aexit__(None, None, None)

    async def refine(
        self,
        query: str,
        results: Mapping[str, StreamResult],
        stores: Mapping[str, FrameSource | None],
        durations: Mapping[str, float],
        top_k: int,
        texts: Mapping[str, Sequence[ScoredCaption]] | None = None,
    ) -> dict[str, StreamResult]:
        """LLM answers per stream; each falls back to its input result on any failure.

        ``results`` and ``stores`` are keyed by stream name; ``durations`` is
        each stream's last retained time (seconds), the bound for LLM moments;
        ``texts`` (optional, by stream) the words said or shown near the
        candidates as caption tokens.
        LLM failures never raise: they become ``llm fallback`` (or ``captions
        skipped``) notes. Errors of the caller's frame source or encoder propagate.
        """
        out: dict[str, StreamResult] = {}
        try:
            vision = (await self.client.capabilities()).vision
        except LLMServerError:
            vision = False  # answer() below falls back with the reason
        # Query understanding only feeds the caption QA filter: skip the extra
        # LLM call where no captions can be made (text-only servers).
        understanding = await understand_or_heuristic(self.client if vision else None, query)
        for name, result in results.items():
            store = stores.get(name)
            captions: list[ScoredCaption] = []
            images: list[FrameImage] = []
            if vision and store is not None and result.moments:
                try:
                    captions = await self.captioner.caption_regions(
                        name,
                        query,
                        result.moments,
                        store,
                        understanding,
                        frames_per_region=self.cfg.frames_per_region,
                    )
                    images = await asyncio.to_thread(_evidence, store, result)
                except LLMServerError as exc:
                    result.notes.append(f"captions skipped: {type(exc).__name__}: {exc}")
            captions = [*captions, *(texts or {}).get(name, ())]
            answered = await answer(
                query,
                result.moments,
                duration=durations.get(name, 0.0),
                client=self.client,
                captions=captions,
                images=images,
                budget_tokens=self.cfg.budget_tokens,
                max_tokens=self.cfg.max_tokens,
                top_k=top_k,
                coverage=result.coverage,
                meaningless=result.meaningless,
            )
            answered.notes = [*result.notes, *answered.notes]
            out[name] = answered
        return out


def _evidence(store: FrameSource, result: StreamResult) -> list[FrameImage]:
    images = []
    for m in result.moments:
        for t in m.evidence[:1]:
            at, jpeg = store.get_jpeg(t)
            images.append(FrameImage(at, jpeg, float(m.score)))
    return images
