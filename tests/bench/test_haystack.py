"""The haystack builder on the real data folder: a 2-minute 480p 2 fps build."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from agent.errors import ConfigError
from bench import haystack
from bench.footage import Scene, Shot
from bench.haystack import HaystackParams, HaystackSet, build, make_params, parse_duration
from bench.haystack_plan import MAX_SCENE, MIN_SCENE, load_data, plan_scenes

DATA = haystack.DEFAULT_DATA
pytestmark = pytest.mark.skipif(not (DATA / "coco").is_dir(), reason="shared data folder missing")

PARAMS = HaystackParams(duration=120.0, fps=2, height=480, needles=2, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("haystack-cache")


@pytest.fixture(scope="module")
def built(cache: Path) -> HaystackSet:
    return build(PARAMS, DATA, cache)


@pytest.fixture(scope="module")
def manifest(built: HaystackSet) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(built.manifest.read_text())
    return data


@pytest.fixture(scope="module")
def luma(built: HaystackSet) -> tuple[list[float], list[bool], np.ndarray]:
    """Times, keyframe flags and Y planes of every decoded frame."""
    times, keys, planes = [], [], []
    with av.open(str(built.video)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        for f in c.decode(stream):
            times.append(float(f.time))
            keys.append(bool(f.key_frame))
            planes.append(f.to_ndarray(format="yuv420p")[: f.height])
    return times, keys, np.stack(planes)


def _scenes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    scenes = manifest["scenes"]
    assert isinstance(scenes, list)
    return scenes


def test_video_is_h264_at_the_asked_size_rate_and_gop(
    luma: tuple[list[float], list[bool], np.ndarray],
) -> None:
    times, keys, planes = luma
    assert planes.shape == (240, 480, 854)
    assert np.allclose(np.diff(times), 0.5)
    key_times = [t for t, k in zip(times, keys, strict=True) if k]
    assert key_times[0] == 0.0
    assert max(np.diff(key_times)) <= 2.0  # keyframe interval 2 s at most


def test_scenes_tile_the_duration_and_each_needle_appears_once(manifest: dict[str, Any]) -> None:
    scenes = _scenes(manifest)
    assert scenes[0]["start_frame"] == 0 and scenes[-1]["end_frame"] == 240
    for a, b in itertools.pairwise(scenes):
        assert a["end_frame"] == b["start_frame"]
    for s in scenes:
        assert 5 * 2 <= s["end_frame"] - s["start_frame"] <= (MAX_SCENE + MIN_SCENE) * 2
        assert s["photo"].startswith("coco/" if s["needle"] is not None else "imagenet_sample/")
    needles = [s["needle"] for s in scenes if s["needle"] is not None]
    assert sorted(needles) == [0, 1]
    assert len({s["photo"] for s in scenes if s["needle"] is not None}) == 2


def test_ground_truth_is_qvhighlights_with_text_and_image_queries(
    built: HaystackSet, manifest: dict[str, Any]
) -> None:
    windows = {s["needle"]: [s["start"], s["end"]] for s in _scenes(manifest) if s["needle"] is not None}
    text = [json.loads(line) for line in built.gt_text.read_text().splitlines()]
    image = [json.loads(line) for line in built.gt_image.read_text().splitlines()]
    assert len(text) == 5 * 2 and len(image) == 2
    captions = {
        json.loads(line)["image_id"]: json.loads(line)["captions"]
        for line in (DATA / "coco" / "captions.jsonl").read_text().splitlines()
    }
    for rec in text + image:
        assert set(rec) >= {"qid", "query", "duration", "vid", "relevant_windows", "kind"}
        assert rec["duration"] == 120.0 and rec["vid"] == manifest["vid"]
        assert rec["relevant_windows"] == [windows[rec["needle"]]]
    assert [r["qid"] for r in text] == list(range(10))
    assert all(r["kind"] == "text" and r["query"] in captions[r["image_id"]] for r in text)
    for rec in image:
        assert rec["kind"] == "image"
        photo = next(s["photo"] for s in _scenes(manifest) if s["needle"] == rec["needle"])
        with Image.open(built.root / rec["image"]) as q, Image.open(DATA / photo) as orig:
            assert q.format == "JPEG"
            assert 0.79 <= q.width / orig.width <= 0.96 and 0.79 <= q.height / orig.height <= 0.96


def test_each_scene_shows_its_photo(
    manifest: dict[str, Any], luma: tuple[list[float], list[bool], np.ndarray]
) -> None:
    """The decoded middle frame of every scene matches its own rendering, not the others'."""
    scenes = [Scene(**s) for s in _scenes(manifest)]
    renders = {}
    for s in scenes:
        j = (s.end_frame - s.start_frame) // 2
        renders[s.start_frame + j] = Shot(s, DATA, 854, 480).planes(j)[0].astype(np.int16)
    for k in renders:
        decoded = luma[2][k].astype(np.int16)
        # The brightness drift is a uniform offset: compare after removing the mean difference.
        errs = {kk: float(np.abs((d := decoded - r) - d.mean()).mean()) for kk, r in renders.items()}
        assert errs[k] < 6.0
        assert errs[k] < 0.5 * min(e for kk, e in errs.items() if kk != k)


def test_rebuild_comes_from_cache_and_parameters_change_the_key(built: HaystackSet, cache: Path) -> None:
    mtime = built.video.stat().st_mtime_ns
    again = build(PARAMS, DATA, cache)
    assert again.cached and again.video == built.video and again.video.stat().st_mtime_ns == mtime
    assert haystack.cache_key(PARAMS, DATA) != haystack.cache_key(PARAMS.model_copy(update={"seed": 4}), DATA)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no partial builds left


def test_plan_is_seeded(built: HaystackSet) -> None:
    distract, needles = load_data(DATA)
    long = HaystackParams(duration=3600.0, needles=20, seed=7)
    a, b = plan_scenes(long, distract, needles), plan_scenes(long, distract, needles)
    c = plan_scenes(long.model_copy(update={"seed": 8}), distract, needles)
    assert a == b and a != c
    assert a[-1].end == 3600.0 and sum(s.needle is not None for s in a) == 20
    assert {s.motion for s in a} == {"static", "pan", "zoom"}
    assert any(s.dissolve_frames == 0 for s in a[1:]) and any(s.dissolve_frames > 0 for s in a)


def test_bad_input_raises_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_params(duration=10.0)
    with pytest.raises(ConfigError):
        make_params(fps=7)
    with pytest.raises(ConfigError, match="needles"):
        build(HaystackParams(duration=120.0, needles=200), DATA, tmp_path)
    with pytest.raises(ConfigError, match="too short"):
        build(HaystackParams(duration=60.0, needles=40), DATA, tmp_path)
    with pytest.raises(ConfigError):
        build(PARAMS, tmp_path / "nowhere", tmp_path)
    assert not list(tmp_path.iterdir())


def test_unreadable_photo_fails_cleanly_and_leaves_no_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "imagenet_sample").mkdir(parents=True)
    (data / "coco" / "images").mkdir(parents=True)
    for name in sorted(p.name for p in (DATA / "imagenet_sample").glob("*.jpg"))[:3]:
        (data / "imagenet_sample" / name).write_bytes(b"not a jpeg")
    rec = json.loads((DATA / "coco" / "captions.jsonl").read_text().splitlines()[0])
    shutil.copy(DATA / "coco" / rec["image"], data / "coco" / rec["image"])
    (data / "coco" / "captions.jsonl").write_text(json.dumps(rec) + "\n")
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="cannot read photo"):
        build(HaystackParams(duration=60.0, needles=1), data, cache)
    assert not list(cache.iterdir())


def test_durations_parse() -> None:
    assert parse_duration("90") == 90.0 and parse_duration("90s") == 90.0
    assert parse_duration("10m") == 600.0 and parse_duration("24h") == 86400.0
    assert parse_duration("1h30m") == 5400.0
    for bad in ("", "h", "1d", "ten minutes"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_cli_builds_through_the_cache(
    built: HaystackSet, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="vmr bench")
    haystack.register(parser.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(
        ["haystack", "build", "--duration", "2m", "--fps", "2", "--height", "480", "--needles", "2",
         "--seed", "3", "--data", str(DATA), "--cache", str(cache)]
    )  # fmt: skip
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cached"] is True and out["video"] == str(built.video)
    with pytest.raises(SystemExit):
        parser.parse_args(["haystack", "build", "--duration", "soon"])
