"""``vmr llm serve``: run the LLM server in the foreground until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from llm_server.errors import LLMServerError
from llm_server.launch import DEFAULT_VLLM_MODEL, LLMServer, ServerOptions
from llm_server.models import DEFAULT_MODEL, PACKAGED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``llm serve`` to a CLI; the handler is stored as ``args.func(args) -> int``."""
    llm = subparsers.add_parser("llm", help="LLM server for the answer stage")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True)
    serve = llm_sub.add_parser(
        "serve",
        help="start vLLM (GPU) or the embedded llama.cpp server (CPU)",
        description="Serve an OpenAI-compatible LLM: vLLM where CUDA is present, else llama.cpp.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    serve.add_argument(
        "--model",
        default=None,
        help=f"GGUF file or packaged model for llama.cpp ({', '.join(sorted(PACKAGED))}; default {DEFAULT_MODEL})",
    )
    serve.add_argument("--vllm-model", default=DEFAULT_VLLM_MODEL, help="Hugging Face model for vLLM")
    serve.add_argument("--backend", choices=("auto", "vllm", "llama_cpp"), default="auto")
    serve.add_argument("--n-ctx", type=int, default=4096, help="context length (max model len)")
    serve.add_argument("--threads", type=int, default=2, help="CPU threads (llama.cpp)")
    serve.add_argument("--images-per-prompt", type=int, default=8, help="image limit per prompt (vLLM)")
    serve.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    serve.set_defaults(func=run_serve)


def options_from(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from parsed ``llm serve`` arguments."""
    return ServerOptions(
        host=args.host,
        port=args.port,
        model=args.model,
        vllm_model=args.vllm_model,
        n_ctx=args.n_ctx,
        threads=args.threads,
        images_per_prompt=args.images_per_prompt,
        backend=args.backend,
        ready_timeout=args.ready_timeout,
    )


async def serve_forever(opts: ServerOptions) -> None:
    """Start the server, print its URL, and stop it cleanly on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with LLMServer(opts) as server:
        print(f"{server.backend} serving at {server.base_url}/v1 (log: {server.log_path})", flush=True)
        waiter = asyncio.create_task(stop.wait())
        try:
            # Also return if the child dies on its own.
            while not waiter.done() and server.running:
                await asyncio.wait({waiter}, timeout=1.0)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if not server.running and not stop.is_set():
            raise SystemExit(f"LLM server exited: {server.log_tail()}")


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``vmr llm serve``."""
    try:
        asyncio.run(serve_forever(options_from(args)))
    except LLMServerError as exc:
        print(f"error: {exc}")
        return 2
    return 0
