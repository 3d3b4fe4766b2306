"""What the LLM stage adds per query on the haystack: latency, tokens, and R1 against CLIP alone.

Ingests a cached haystack once, answers ``--queries`` of its text queries with
the CLIP path alone and then through vmr's LLM hand-off
(:class:`agent.service.llm_handoff.LLMHandoff`, as the service and CLI use it)
against a running OpenAI-compatible server (the embedded llama.cpp model by
default, started here), and writes ``bench/results/llm_stage.json``.

With ``tiny-random`` the CLIP text side is random, so R1 of both paths is
meaningless and reported as such; latency and tokens are real.

    python -m bench.llm_stage --queries 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.channels.retrieval import Query
from agent.config import EncoderConfig, IndexConfig, LLMConfig, Settings
from agent.core.qvh import load_jsonl, qvh_metrics
from agent.index.video_index import VideoIndex
from agent.service.llm_handoff import LLMHandoff
from bench.haystack import DEFAULT_CACHE, DEFAULT_DATA, build, make_params, parse_duration
from llm_server.launch import LLMServer, ServerOptions
from streams.file import decode_frames

RESULTS = Path(__file__).resolve().parent / "results" / "llm_stage.json"


def _windows(moments: list[Any]) -> list[list[float]]:
    return [[m.start, m.end, float(m.score)] for m in moments]


async def _run(n_queries: int, duration: str, url: str | None) -> dict[str, Any]:
    hs = build(make_params(duration=parse_duration(duration), fps=2, height=480), DEFAULT_DATA, DEFAULT_CACHE)
    rows = load_jsonl(hs.gt_text)[:n_queries]
    settings = Settings(prescreen=EncoderConfig(model="tiny-random", allow_random=True), index=IndexConfig())
    with tempfile.TemporaryDirectory() as tmp:
        idx = VideoIndex.create(Path(tmp), settings)
        idx.ingest(decode_frames(hs.video, stream="hay", fps=2.0, short_side=idx.prescreen.image_size))
        server = None if url else LLMServer(ServerOptions(backend="llama_cpp", n_ctx=2048, threads=2))
        if server is not None:
            await server.start()
        base = url or (server.base_url if server else "")
        clip_preds, llm_preds, seconds, tokens, paths = [], [], [], [], []
        try:
            async with LLMHandoff(LLMConfig(url=base, timeout=300.0), idx) as llm:
                for r in rows:
                    results = idx.query(Query(text=r["query"], top_k=5))
                    clip_preds.append(
                        {"qid": r["qid"], "pred_relevant_windows": _windows(results["hay"].moments)}
                    )
                    t0 = time.perf_counter()
                    out = (await llm.refine(r["query"], results, 5))["hay"]
                    seconds.append(time.perf_counter() - t0)
                    paths.append(out.answered_by)
                    tokens.append(out.llm_usage or {})
                    llm_preds.append({"qid": r["qid"], "pred_relevant_windows": _windows(out.moments)})
        finally:
            if server is not None:
                await server.stop()
        idx.close()
    return {
        "bench": "llm_stage",
        "haystack": duration,
        "queries": len(rows),
        "encoder": "tiny-random",
        "meaningless_r1": True,
        "llm": url or "embedded llama.cpp, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 2 threads",
        "answered_by": paths,
        "seconds_p50": round(statistics.median(seconds), 2),
        "seconds_max": round(max(seconds), 2),
        "prompt_tokens_mean": round(statistics.mean(t.get("prompt_tokens", 0) for t in tokens), 1),
        "completion_tokens_mean": round(statistics.mean(t.get("completion_tokens", 0) for t in tokens), 1),
        "clip": qvh_metrics(rows, clip_preds),
        "clip_plus_llm": qvh_metrics(rows, llm_preds),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--duration", default="1h")
    p.add_argument("--url", default=None, help="use this OpenAI-compatible server instead of starting one")
    a = p.parse_args()
    report = asyncio.run(_run(a.queries, a.duration, a.url))
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
