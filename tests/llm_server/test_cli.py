"""The ``vmr llm serve`` argument parser."""

from __future__ import annotations

import argparse

import pytest

from llm_server.cli import options_from, register, run_serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmr")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_serve_arguments_become_options() -> None:
    args = _parser().parse_args(
        [
            "llm",
            "serve",
            "--port",
            "0",
            "--n-ctx",
            "2048",
            "--threads",
            "3",
            "--backend",
            "llama_cpp",
            "--model",
            "gemma3-270m-q4_k_m",
        ]
    )
    assert args.func is run_serve
    opts = options_from(args)
    assert (opts.port, opts.n_ctx, opts.threads, opts.backend, opts.model) == (
        0,
        2048,
        3,
        "llama_cpp",
        "gemma3-270m-q4_k_m",
    )
    assert opts.vllm_model == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_bad_backend_is_rejected() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["llm", "serve", "--backend", "tgi"])


def test_unavailable_model_exits_with_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(
        ["llm", "serve", "--backend", "llama_cpp", "--model", "/nonexistent.gguf", "--port", "0"]
    )
    assert run_serve(args) == 2
    assert "error:" in capsys.readouterr().out
