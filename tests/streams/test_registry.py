"""The registry of source kinds: the discriminated union of specs, factories, unknown kinds."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from streams import registry
from streams.errors import SourceUnavailableError
from streams.file import FileSource, FileSpec
from streams.registry import HUB_WHIP, OpenContext, open_source, parse_spec
from streams.rtsp import RTSPSource, RTSPSpec
from streams.segments import SegmentFolderSource, SegmentsSpec
from streams.source import SourceSpec
from streams.whip import WhipIngest, WhipSource, WhipSpec
from tests.videos import make_video

SPECS: list[dict[str, Any]] = [
    {"id": "a", "kind": "file", "path": "/v/a.mp4", "realtime": True, "loop": True, "fps": 4.0},
    {"id": "b", "kind": "file", "path": "/v/b.mkv", "start_wall": "2024-05-01T12:00:00Z", "audio": True},
    {"id": "c", "kind": "rtsp", "url": "rtsp://cam.local/main", "transport": "udp"},
    {"id": "d", "kind": "segments", "path": "/rec/d", "start_wall": "2024-05-01T12:00:00Z"},
    {"id": "e", "kind": "whip", "fps": 1.0},
]


def test_builtin_kinds_are_registered() -> None:
    kinds = registry.kinds()
    assert {"file", "rtsp", "segments", "whip"} <= set(kinds)
    assert kinds["rtsp"].spec is RTSPSpec and kinds["whip"].spec is WhipSpec


@pytest.mark.parametrize("data", SPECS, ids=[s["kind"] + "-" + s["id"] for s in SPECS])
def test_union_round_trip_of_persisted_specs(data: dict[str, Any]) -> None:
    spec = parse_spec(json.loads(json.dumps(data)))
    assert type(spec) is registry.kinds()[data["kind"]].spec
    dumped = spec.model_dump(mode="json", exclude_defaults=True)  # what a service persists
    assert dumped == data
    assert parse_spec(dumped) == spec


def test_spec_properties_replace_branches_on_kind(tmp_path: Path) -> None:
    specs = [parse_spec(s) for s in SPECS]
    assert [s.live for s in specs] == [True, False, True, False, True]
    assert [s.paced for s in specs] == [True, False, False, False, False]
    assert [s.repeats for s in specs] == [True, False, False, False, False]
    assert specs[1].wall_origin() == pytest.approx(1714564800.0)
    assert specs[0].wall_origin() is None
    assert specs[2].location() == {"url": "rtsp://cam.local/main", "path": None}
    relative = parse_spec({"id": "r", "kind": "segments", "path": "rec"})
    assert relative.location()["path"] == "rec"
    assert relative.rebased(tmp_path).location()["path"] == str(tmp_path / "rec")
    assert specs[0].rebased(tmp_path) == specs[0]  # absolute paths stay
    with pytest.raises(SourceUnavailableError):
        relative.rebased(tmp_path).check_input()
    (tmp_path / "rec").mkdir()
    relative.rebased(tmp_path).check_input()


def test_unknown_kind_and_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_spec({"id": "x", "kind": "carrier-pigeon"})
    with pytest.raises(ValidationError, match="kind"):
        parse_spec({"id": "x"})
    with pytest.raises(ValidationError, match="url"):
        parse_spec({"id": "x", "kind": "rtsp"})
    with pytest.raises(ValidationError, match="loop"):
        parse_spec({"id": "x", "kind": "whip", "loop": True})  # options of another kind
    with pytest.raises(ValidationError, match="fps"):
        parse_spec({"id": "x", "kind": "file", "path": "/a", "fps": 0})


def test_a_spec_of_an_unregistered_kind_cannot_be_opened() -> None:
    class Orphan(SourceSpec):
        kind: Literal["orphan"]

    with pytest.raises(SourceUnavailableError, match="orphan"):
        open_source(Orphan(id="o", kind="orphan"), OpenContext())


def test_register_needs_a_literal_kind() -> None:
    class Vague(SourceSpec):
        pass

    with pytest.raises(TypeError):
        registry.register(Vague, lambda spec, ctx: None)  # type: ignore[arg-type,return-value]


async def test_factories_build_each_kind_from_its_spec(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", [(1.0, (10, 20, 30))], fps=10).path
    (tmp_path / "rec").mkdir()
    ctx = OpenContext(fps=3.0, queue_size=4, hubs={HUB_WHIP: (ingest := WhipIngest())})
    try:
        file = open_source(parse_spec({"id": "f", "kind": "file", "path": str(video)}), ctx)
        rtsp = open_source(parse_spec({"id": "r", "kind": "rtsp", "url": "rtsp://127.0.0.1:9/x"}), ctx)
        segs = open_source(parse_spec({"id": "s", "kind": "segments", "path": str(tmp_path / "rec")}), ctx)
        whip = open_source(parse_spec({"id": "w", "kind": "whip"}), ctx)
        assert isinstance(file, FileSource) and isinstance(rtsp, RTSPSource)
        assert isinstance(segs, SegmentFolderSource) and isinstance(whip, WhipSource)
        assert ingest.streams == ["w"]
        assert [s.queue_policy for s in (file, rtsp, segs, whip)] == ["block", "latest", "block", "latest"]
        assert [s.restarts_clock for s in (file, rtsp, segs, whip)] == [False, True, False, True]
        for src in (file, rtsp, segs, whip):
            await src.close()
        with pytest.raises(SourceUnavailableError, match="no such file"):
            open_source(FileSpec(id="m", kind="file", path=str(tmp_path / "missing.mp4")), ctx)
        with pytest.raises(SourceUnavailableError, match="WHIP"):
            open_source(WhipSpec(id="w2", kind="whip"), OpenContext())
        with pytest.raises(SourceUnavailableError):
            open_source(SegmentsSpec(id="s2", kind="segments", path=str(tmp_path / "nope")), ctx)
    finally:
        await ingest.close()


PLUGIN = """
from typing import Literal

from streams import registry
from streams.source import SourceSpec


class PigeonSpec(SourceSpec):
    kind: Literal["pigeon"]
    loft: str


def open_pigeon(spec, ctx):
    raise NotImplementedError


registry.register(PigeonSpec, open_pigeon)
"""


def _distribution(site: Path, name: str, entry_points: str) -> None:
    """An installed distribution as pip leaves it: a dist-info folder with METADATA and entry_points.txt."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_plugin_kinds_come_from_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "vmr_pigeon_source.py").write_text(PLUGIN)
    _distribution(site, "vmr_pigeon", f"[{registry.ENTRY_POINT_GROUP}]\npigeon = vmr_pigeon_source\n")
    _distribution(site, "vmr_broken", f"[{registry.ENTRY_POINT_GROUP}]\nbroken = vmr_no_such_module\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "vmr_pigeon_source", raising=False)
    # A fresh registry (restored after the test): kinds are loaded on first use.
    monkeypatch.setattr(registry, "_kinds", dict(registry._kinds))
    monkeypatch.setattr(registry, "_adapter", None)
    monkeypatch.setattr(registry, "_builtins_loaded", False)

    assert {"vmr_pigeon_source", "vmr_no_such_module"} <= set(registry.plugin_modules())
    with caplog.at_level(logging.WARNING, logger="streams.registry"):
        kinds = registry.kinds()
    assert "pigeon" in kinds and {"file", "rtsp", "segments"} <= set(kinds)  # built-ins still there
    assert any("vmr_no_such_module" in r.getMessage() for r in caplog.records)  # the broken one is logged
    spec = parse_spec({"id": "p", "kind": "pigeon", "loft": "roof"})
    assert type(spec) is kinds["pigeon"].spec and spec.model_dump()["loft"] == "roof"
    sys.modules.pop("vmr_pigeon_source", None)  # the module lives in tmp_path only
