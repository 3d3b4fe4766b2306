"""The single-process service's websocket and HTTP tests, unchanged, against the Ray gateway.

The subset: every test of ``tests/agent/service/test_server.py`` (a file stream's query, thumbnail,
health and metrics; typed errors keeping the connection open; the token; a corrupt file's failed
status) and the realtime watch of ``test_watch.py`` (embeddings flowing actor -> gateway -> watch).
Each runs as written, its ``running`` helper swapped for one whose streams live on the cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agent.service import test_server, test_watch
from tests.agent.service.cluster.conftest import on_cluster

pytestmark = pytest.mark.timeout(240)

Case = Callable[[Path], Awaitable[None]]
CASES: list[tuple[Any, Case]] = [
    (test_server, test_server.test_file_stream_query_thumbnail_health_metrics),
    (test_server, test_server.test_errors_keep_the_connection_open),
    (test_server, test_server.test_token_is_required_when_configured),
    (test_server, test_server.test_corrupt_file_marks_stream_failed),
    (test_watch, test_watch.test_watch_fires_on_needle_of_realtime_replay),
]


@pytest.mark.parametrize(("module", "case"), CASES, ids=[case.__name__ for _, case in CASES])
async def test_single_process_protocol_test_passes_against_the_gateway(
    module: Any, case: Case, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "running", on_cluster(cluster))
    await case(tmp_path)
