"""The web page's size and first paint in headless chromium against a real service.

Size: the bytes of every file the page loads from the package (``/``, ``/static/*``), as
served, uncompressed. First paint: ``performance.getEntriesByType('paint')`` (``first-paint``,
``first-contentful-paint``) of ``--loads`` loads, each in a fresh browser context (no cache,
no session storage), against ``vmr serve``'s parts on a loopback port with one ingested file
stream; also the time until the stream's row is on screen (websocket hello, ``streams.list``,
render). The median is the figure; every load is kept.

    python -m bench.page_load --model MobileCLIP2-S0 --random-weights --backend openvino --loads 5

Chromium is Debian's (``scripts/system-deps.sh``), driven by Playwright with ``executable_path``.
Results: ``bench/results/page_load.json`` (with the command that made it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from agent.config import EncoderConfig, IndexConfig, Settings
from agent.service.config import ServiceConfig, SourcesConfig
from agent.service.pipeline import Service
from agent.service.server import Server
from agent.service.web.web_routes import PAGE_PATHS

RESULTS = Path(__file__).resolve().parent / "results" / "page_load.json"
READY_S = 300.0
"""Seconds the one stream may take to be ingested before the loads start."""
LOAD_TIMEOUT_MS = 30_000

_PAINT_JS = (
    """() => Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"""
)
_ROW_JS = """() => new Promise((ok) => {
  const seen = () => document.querySelector('li[data-stream="vid"] .state');
  if (seen()) return ok(performance.now());
  new MutationObserver((_, obs) => { if (seen()) { obs.disconnect(); ok(performance.now()); } })
    .observe(document.body, { childList: true, subtree: true });
})"""


async def page_bytes(base: str) -> dict[str, int]:
    """Bytes of each file of the page as served (uncompressed)."""
    out: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        for path in sorted(PAGE_PATHS):
            async with http.get(base + path.lstrip("/")) as r:
                r.raise_for_status()
                out[path] = len(await r.read())
    return out


async def loads(base: str, n: int, chromium: str) -> list[dict[str, float]]:
    """``n`` cold loads of the page: paint entries and time to the stream's row, milliseconds."""
    from playwright.async_api import async_playwright

    rows = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            for _ in range(n):
                ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await ctx.new_page()
                page.set_default_timeout(LOAD_TIMEOUT_MS)
                await page.goto(base, wait_until="load")
                row_ms = await page.evaluate(_ROW_JS)
                # Paint entries are recorded once the frame is presented, which may come after `load`.
                await page.wait_for_function(
                    "() => performance.getEntriesByType('paint').some(e => e.name === 'first-paint')"
                )
                paint = await page.evaluate(_PAINT_JS)
                rows.append(
                    {
                        "first_paint_ms": round(paint["first-paint"], 1),
                        "first_contentful_paint_ms": round(
                            paint.get("first-contentful-paint", float("nan")), 1
                        ),
                        "stream_row_ms": round(row_ms, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                await ctx.close()
        finally:
            await browser.close()
    return rows


async def run(settings: Settings, n: int, chromium: str, work: Path) -> dict[str, Any]:
    from tests.agent.service.helpers import add, client, needle_video, until

    video = needle_video(work / "v.mp4")
    cfg = ServiceConfig(
        host="127.0.0.1", port=0, index=work / "index", sources=SourcesConfig(media_roots=[work])
    )
    async with Service(cfg, settings) as svc:
        await svc.start()
        server = Server(svc.serving, cfg)
        port = await server.start()
        try:
            url = f"ws://127.0.0.1:{port}"
            async with client(url) as ws:
                await add(ws, {"id": "vid", "kind": "file", "path": str(video), "realtime": False})
                await until(ws, "vid", lambda s: s["status"] == "done", limit=READY_S)
            base = f"http://127.0.0.1:{port}/"
            return {"bytes": await page_bytes(base), "loads": await loads(base, n, chromium)}
        finally:
            await server.close()


def _summary(measured: dict[str, Any]) -> dict[str, Any]:
    rows = measured["loads"]
    out: dict[str, Any] = {"page_bytes": sum(measured["bytes"].values()), "loads": len(rows)}
    for key in ("first_paint_ms", "first_contentful_paint_ms", "stream_row_ms"):
        values = [r[key] for r in rows]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(
        0, str(Path(__file__).resolve().parents[1])
    )  # the tests' media helpers and chromium lookup
    from agent.cli.options import add_model_options
    from bench.args import encoder_from_args, save_report
    from bench.run_haystack import git_commit, machine_info
    from tests.agent.service.web.browser import chromium

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--loads", type=int, default=5, help="cold page loads (median reported)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    prescreen: EncoderConfig = encoder_from_args(a)
    settings = Settings(prescreen=prescreen, index=IndexConfig(fps=2.0, grid=2, store_bytes=64 * 1024**2))
    machine = machine_info()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        measured = asyncio.run(run(settings, a.loads, chromium(), Path(tmp)))
    report = {
        "bench": "page_load",
        "command": " ".join(["python", "-m", "bench.page_load", *argv_used]),
        "model": prescreen.model,
        "random_weights": prescreen.random_weights,
        "backend": prescreen.backend,
        "machine": {**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "seconds": round(time.time() - started, 1),
        "summary": _summary(measured),
        **measured,
    }
    save_report(a.out, report, show="summary")


if __name__ == "__main__":
    main()
