"""Pretrained weights on a machine whose Hugging Face hub is unreachable: typed error in seconds, or the cache."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

from agent.models.hub import plan
from tests.streams.servers import free_port
from tests.videos import Scene, make_video

ROOT = Path(__file__).resolve().parents[3]
MODEL, TAG = "MobileCLIP2-S0", "dfndr2b"
REPO = "models--timm--MobileCLIP2-S0-OpenCLIP"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache and a hub endpoint nobody listens on (huggingface_hub reads both at import)."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def _cache_file(cache: Path, name: str) -> Path:
    """A file in the hub cache's layout (refs/main -> snapshots/<commit>/name)."""
    commit = "0" * 40
    (cache / REPO / "refs").mkdir(parents=True)
    (cache / REPO / "refs" / "main").write_text(commit)
    path = cache / REPO / "snapshots" / commit / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    return path


@contextlib.contextmanager
def answering(status: int) -> Iterator[str]:
    """A local HTTP server answering every ``HEAD`` with ``status``; yields its URL."""

    class Answer(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def answering_hub(hub: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The empty cache of ``hub``, and a local HTTP server standing in for a reachable hub (200 to all)."""
    with answering(200) as url:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        yield hub


def test_not_cached_and_unreachable_is_unavailable_with_the_reason(hub: Path) -> None:
    how = plan(MODEL, TAG)
    assert how.unavailable is not None
    assert "not in the local Hugging Face cache" in how.unavailable and "unreachable" in how.unavailable


def test_offline_mode_needs_no_probe(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    how = plan(MODEL, TAG)
    assert how.unavailable is not None and "HF_HUB_OFFLINE" in how.unavailable


def test_cached_and_unreachable_loads_the_cached_file_with_the_tags_preprocessing(hub: Path) -> None:
    path = _cache_file(hub, "open_clip_model.safetensors")
    how = plan(MODEL, TAG)
    assert how.unavailable is None and Path(how.pretrained) == path
    assert tuple(how.preprocess["mean"]) == (0.0, 0.0, 0.0)  # MobileCLIP2's, not open_clip's default


def test_a_reachable_hub_keeps_the_real_loading_path(answering_hub: Path) -> None:
    _cache_file(answering_hub, "open_clip_model.safetensors")
    how = plan(MODEL, TAG)
    assert how.pretrained == TAG and how.unavailable is None and how.preprocess == {}


@pytest.mark.parametrize("status", [404, 503])
def test_an_error_answer_is_not_the_hub(hub: Path, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    # A proxy or portal answering for a hub it cannot reach: no download would work either.
    with answering(status) as url:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        began = time.monotonic()
        how = plan(MODEL, TAG)
        assert how.unavailable is not None and f"answered HTTP {status}" in how.unavailable
        assert time.monotonic() - began < 30  # one probe, not the download's retries (bound, not a figure)
        path = _cache_file(hub, "open_clip_model.safetensors")
        how = plan(MODEL, TAG)
        assert how.unavailable is None and Path(how.pretrained) == path  # the cache, without the network


@pytest.mark.parametrize("answer", [None, 503])
def test_vmr_ingest_offline_gives_the_typed_error_without_retrying(
    tmp_path: Path, answer: int | None
) -> None:
    # The real command, in a fresh process (huggingface_hub reads HF_ENDPOINT at import). Bounded:
    # before, huggingface_hub retried for about a minute before the error. ``answer``: nobody
    # listens on the endpoint, or a proxy answers 503 for it.
    video = make_video(tmp_path / "v.mp4", [Scene(1.0, (200, 30, 30), True)], fps=5).path
    with contextlib.ExitStack() as stack:
        endpoint = (
            f"http://127.0.0.1:{free_port()}" if answer is None else stack.enter_context(answering(answer))
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0",
        }
        argv = [sys.executable, "-m", "agent.cli.main", "ingest", str(video), "--index", str(tmp_path / "i")]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=45)
    assert done.returncode == 2, done.stderr
    assert "vmr: error [weights_unavailable]" in done.stderr
    assert "not in the local Hugging Face cache" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("entry", [5, "x", [], ["repo"], ["repo", 5], [None, ["f"]], {"a": 1}])
def test_a_damaged_hub_files_entry_is_looked_up_again(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: object
) -> None:
    """A hub-files.json entry another program (or a torn disk) left malformed is a miss, not a crash."""
    import json

    from agent.models import hub as hub_module

    monkeypatch.setenv("VMR_CACHE", str(tmp_path / "vmr"))
    key = f"{MODEL}:{TAG}|open_clip={hub_module._open_clip_version()}"
    (tmp_path / "vmr").mkdir()
    (tmp_path / "vmr" / "hub-files.json").write_text(json.dumps({key: entry}))
    path = _cache_file(hub, "open_clip_model.safetensors")
    assert hub_module.cached_file(MODEL, TAG) == str(path)
    memo = json.loads((tmp_path / "vmr" / "hub-files.json").read_text())
    assert memo[key][0] == "timm/MobileCLIP2-S0-OpenCLIP"  # rewritten with the real answer
