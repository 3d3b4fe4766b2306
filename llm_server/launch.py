"""Start an OpenAI-compatible LLM server as a child process and wait until it answers.

Where CUDA and vLLM are present, ``vllm serve`` runs a vision-language model;
otherwise llama-cpp-python's server runs the embedded GGUF on the CPU. Both speak
the same HTTP API, so nothing downstream knows which one runs.

The recommended vLLM model is Qwen2.5-VL-3B-Instruct: it takes several images per
prompt (frames as evidence and for the QA filter/captions), follows JSON schemas
well, is small enough for one 24 GB GPU with room for a long context, and its
text tower is Qwen2.5 — the same tokenizer family as the embedded CPU default,
so prompts and budgets behave alike on both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from llm_server.errors import ServerUnavailableError
from llm_server.models import resolve_model

DEFAULT_VLLM_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How to launch the server. ``port=0`` picks a free loopback port."""

    host: str = "127.0.0.1"
    port: int = 0
    model: str | None = None
    """GGUF path or packaged name (llama.cpp); None is the embedded default."""
    vllm_model: str = DEFAULT_VLLM_MODEL
    n_ctx: int = 4096
    threads: int = 2
    images_per_prompt: int = 8
    backend: str = "auto"
    """``auto`` (vLLM when CUDA is usable), ``vllm`` or ``llama_cpp``."""
    ready_timeout: float = 180.0
    stop_grace: float = 10.0


def cuda_available() -> bool:
    """True when torch sees a GPU and vLLM is importable."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_backend(opts: ServerOptions) -> str:
    """``vllm`` or ``llama_cpp`` for these options."""
    if opts.backend in ("vllm", "llama_cpp"):
        return opts.backend
    if opts.backend != "auto":
        raise ServerUnavailableError(f"unknown LLM backend {opts.backend!r} (auto, vllm, llama_cpp)")
    return "vllm" if cuda_available() else "llama_cpp"


def vllm_command(opts: ServerOptions, port: int) -> list[str]:
    """``vllm serve`` with the flags this project relies on."""
    return [
        "vllm",
        "serve",
        opts.vllm_model,
        "--host",
        opts.host,
        "--port",
        str(port),
        "--max-model-len",
        str(opts.n_ctx),
        # JSON form of the per-prompt media limit (the key=value form is gone).
        "--limit-mm-per-prompt",
        json.dumps({"image": opts.images_per_prompt, "video": 0}),
        # SMORE mode: caption token embeddings scaled by importance.
        "--enable-prompt-embeds",
        # response_format json_schema is on by default; pin the grammar backend.
        "--structured-outputs-config.backend",
        "xgrammar",
    ]


def llama_cpp_command(opts: ServerOptions, port: int, model_path: Path) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on the embedded GGUF."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServerUnavailableError(
            "llama-cpp-python is not installed; run: "
            "CMAKE_ARGS='-DGGML_NATIVE=OFF' .venv/bin/pip install 'llama-cpp-python[server]'"
        )
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        opts.host,
        "--port",
        str(port),
        "--n_ctx",
        str(opts.n_ctx),
        "--n_threads",
        str(opts.threads),
        "--n_threads_batch",
        str(opts.threads),
    ]


def free_port(host: str) -> int:
    """A port the OS calls free right now (the launcher binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """ServerUnavailableError if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerUnavailableError(f"cannot serve the LLM on {host}:{port}: {exc.strerror}") from exc


class LLMServer:
    """An LLM server child process: ``async with LLMServer(opts) as srv: srv.base_url``.

    Start waits until ``GET /v1/models`` answers; stop terminates the process
    group, waits ``stop_grace`` seconds, then kills. ``stop()`` is idempotent.
    Server output goes to :attr:`log_path`; its tail is quoted in errors.
    """

    def __init__(self, opts: ServerOptions | None = None) -> None:
        self.opts = opts or ServerOptions()
        self.backend = choose_backend(self.opts)
        self.port = 0
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._proc is None:
            raise ServerUnavailableError("LLM server is not started")
        return f"http://{self.opts.host}:{self.port}"

    async def __aenter__(self) -> LLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def command(self) -> list[str]:
        """The command line that :meth:`start` runs (model assembled if needed)."""
        if self.backend == "vllm":
            return vllm_command(self.opts, self.port)
        return llama_cpp_command(self.opts, self.port, resolve_model(self.opts.model))

    async def start(self) -> None:
        """Launch and wait for readiness; ServerUnavailableError if it never gets ready."""
        if self._proc is not None:
            return
        if self.opts.port:
            check_port(self.opts.host, self.opts.port)
        self.port = self.opts.port or free_port(self.opts.host)
        # Model assembly hashes ~0.5 GB: keep it off the event loop.
        cmd = await asyncio.to_thread(self.command)
        self._proc = await asyncio.to_thread(self._spawn, cmd)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        fd, log_name = tempfile.mkstemp(prefix=f"vmr-llm-{self.backend}-", suffix=".log")
        self.log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log:
            # Own process group: vLLM forks workers that must die with it.
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.opts.ready_timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise ServerUnavailableError(
                        f"LLM server exited with code {self._proc.returncode}: {self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    resp = await http.get(f"{self.base_url}/v1/models")
                    if resp.status_code == 200:
                        return
                await asyncio.sleep(0.25)
        raise ServerUnavailableError(
            f"LLM server not ready after {self.opts.ready_timeout:g} s: {self.log_tail()}"
        )

    def log_tail(self, chars: int = 1500) -> str:
        """The last ``chars`` characters of the server's output."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-chars:]
        return data.decode("utf-8", errors="replace")

    async def stop(self) -> None:
        """Terminate, wait, kill (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, self.opts.stop_grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
