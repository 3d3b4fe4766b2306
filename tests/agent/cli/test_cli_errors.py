"""Bad `vmr ingest` input or an unreachable service is a typed one-line error (exit 2), never a traceback;
a partial pass says so."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.errors import ConnectError, ProtocolError, TransportError
from agent.service.client import remote_query

BIKES = Path(__file__).resolve().parents[4] / "shared" / "data" / "videos" / "bikes.mp4"


@pytest.mark.parametrize(
    ("flag", "value", "shown"),
    [
        ("--grid", "9", "--grid 9"),
        ("--fps", "0", "--fps 0.0"),
        ("--theta", "2", "--theta 2.0"),
        ("--rank", "0", "--rank 0"),
        ("--budget", "0", "--budget 0"),
        ("--store-mb", "-1", "--store-mb -1.0"),
    ],
)
def test_a_bad_index_option_names_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, shown: str
) -> None:
    args = ["ingest", str(tmp_path / "none.mp4"), "--index", str(tmp_path / "i"), "--model", "tiny-random"]
    assert main([*args, flag, value]) == 2
    err = capsys.readouterr().err
    assert f"[config]: {shown}:" in err and "Traceback" not in err and "pydantic" not in err
    assert not (tmp_path / "i").exists()  # rejected before anything was created or loaded


def test_an_index_path_that_is_a_file_is_an_index_store_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not BIKES.is_file():
        pytest.skip("needs the shared clip")
    index = tmp_path / "index"
    index.write_text("not a folder")
    assert main(["ingest", str(BIKES), "--index", str(index), "--model", "tiny-random", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[index_store]" in err and "not a directory" in err and "Traceback" not in err
    assert index.read_text() == "not a folder"  # untouched


def test_a_keyframe_pass_that_misses_most_of_the_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bunny = BIKES.with_name("bigbuckbunny.mp4")  # 5.28 s, one keyframe at 0 s
    if not bunny.is_file():
        pytest.skip("needs the shared clip")
    args = ["ingest", str(bunny), "--index", str(tmp_path / "i"), "--model", "tiny-random"]
    assert main([*args, "--keyframes", "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "keyframe pass: the last keyframe ends at 0.04s of 5.28s" in err
    assert any("not indexed" in note for note in json.loads(out.strip().splitlines()[-1])["notes"])


def test_query_rejects_a_negative_llm_timeout_before_opening_the_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["query", str(tmp_path / "none"), "hi", "--llm", "http://127.0.0.1:1", "--llm-timeout", "-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmr: error [config]: ") and "timeout" in err and "Traceback" not in err


def closed_port() -> int:
    """A loopback port that was bound, then closed: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["query", "watch"])
def test_a_service_that_cannot_be_reached_is_a_connect_error(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    assert main([command, "--url", url, "a van"]) == 2
    err = capsys.readouterr().err
    assert err == f"vmr: error [unreachable]: cannot reach the service at {url}: connection refused\n"
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_client_raises_a_transport_error_not_a_protocol_error() -> None:
    with pytest.raises(ConnectError) as info:
        asyncio.run(remote_query(f"ws://127.0.0.1:{closed_port()}", text="a van"))
    assert isinstance(info.value, TransportError) and not isinstance(info.value, ProtocolError)
