"""`vmr serve`: refuses to expose a token-less service beyond loopback; its model flags leave an
existing index's memory rules alone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.cli.main import build_parser, main
from agent.cli.serve import check_exposure, serve_config
from agent.config import IndexConfig
from agent.errors import ConfigError
from agent.index.video_index import VideoIndex
from agent.service.config import ServiceConfig, is_loopback


def test_non_loopback_bind_without_token_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VMR_TOKEN", raising=False)
    argv = [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--index",
        str(tmp_path / "i"),
        "--model",
        "tiny-random",
    ]
    assert main(argv) == 2  # refused before any model loads or port opens
    err = capsys.readouterr().err
    assert "without a token" in err and "--insecure" in err
    assert not (tmp_path / "i").exists()


def test_exposure_rule(caplog: pytest.LogCaptureFixture) -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        check_exposure(ServiceConfig(host=host, token=None), insecure=False)
    for host in ("0.0.0.0", "", "::", "192.168.1.10", "myhost"):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match="without a token"):
            check_exposure(ServiceConfig(host=host, token=None), insecure=False)
        check_exposure(ServiceConfig(host=host, token="t"), insecure=False)  # a token: fine anywhere
    with caplog.at_level(logging.WARNING):
        check_exposure(ServiceConfig(host="0.0.0.0", token=None), insecure=True)
    assert "INSECURE" in caplog.text and "WITHOUT A TOKEN" in caplog.text


@pytest.mark.parametrize("flag", [["--model", "tiny-random"], ["--model", "tiny-random", "--random-weights"]])
def test_model_flags_keep_the_rules_of_an_index_built_under_older_defaults(
    tmp_path: Path, flag: list[str]
) -> None:
    # A deployment restarted with a model flag after the default rules changed: the memory rules
    # the file leaves unset follow index.json (FOLLOW_INDEX), as they do without the flag.
    root = tmp_path / "i"
    cfg = serve_config(build_parser().parse_args(["serve", "--index", str(root), *flag]))
    old = IndexConfig(merge="ward-young", representative="smore", scorer="rep")
    VideoIndex.create(root, cfg.settings.model_copy(update={"index": old})).close()
    again = VideoIndex.create(cfg.service.index, cfg.settings)
    try:
        rules = again.settings.index
        assert (rules.merge, rules.representative, rules.scorer) == ("ward-young", "smore", "rep")
    finally:
        again.close()
