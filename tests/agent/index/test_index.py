"""End-to-end core: a real PyAV video -> ingest -> memory on disk -> queries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.channels.retrieval import Query
from agent.cli.main import main
from agent.config import EncoderConfig, IndexConfig, Settings
from agent.errors import ConfigError, IndexStoreError, QueryError, UnknownStreamError
from agent.index.video_index import VideoIndex
from agent.models import encoder
from streams.errors import CorruptMediaError
from streams.file import decode_frames
from tests.videos import VIDEOS, make_video, photos, random_bytes_file, truncate_copy

TINY = EncoderConfig(model="tiny-random", allow_random=True)


def settings(**index: object) -> Settings:
    return Settings(prescreen=TINY, index=IndexConfig(**index))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Six photo scenes of 8 s each; scene k spans [8k, 8k + 8)."""
    pics = photos(6, offset=40)
    path = tmp_path_factory.mktemp("vid") / "scenes.mp4"
    make_video(path, [(8.0, p) for p in pics], fps=10, size=(320, 240))
    return path, pics


def ingest(root: Path, video: Path, cfg: Settings) -> VideoIndex:
    idx = VideoIndex.create(root, cfg)
    idx.ingest(decode_frames(video, stream="cam", fps=cfg.index.fps, short_side=idx.prescreen.image_size))
    return idx


@pytest.mark.parametrize("grid", [1, 2])
def test_image_query_finds_its_scene(tmp_path: Path, scene_video: tuple[Path, list[Path]], grid: int) -> None:
    video, pics = scene_video
    idx = ingest(tmp_path / "idx", video, settings(grid=grid, budget=16, fps=2.0))
    target = 3
    image = np.asarray(Image.open(pics[target]).convert("RGB"))
    result = idx.query(Query(image=image, top_k=3))["cam"]
    top = result.moments[0]
    overlap = min(top.end, 8.0 * (target + 1)) - max(top.start, 8.0 * target)
    assert overlap > 0.5 * min(top.end - top.start, 8.0), (top, result.moments)
    assert result.meaningless  # tiny-random is labelled
    assert result.answered_by == "refine"
    idx.close()


def test_budget_and_coverage_hold_and_survive_reopen(
    tmp_path: Path, scene_video: tuple[Path, list[Path]]
) -> None:
    video, _pics = scene_video
    idx = ingest(tmp_path / "idx", video, settings(grid=1, budget=3, theta=0.999))
    st = idx.streams["cam"]
    assert st.memory.tokens <= 3
    starts, ends, _ = st.memory.matrix()
    assert starts[0] == pytest.approx(0.0) and ends[-1] == pytest.approx(48.0, abs=0.6)
    assert np.all(starts[1:] == pytest.approx(ends[:-1]))  # contiguous, no overlap
    before = st.memory.matrix()[2].copy()
    idx.close()
    again = VideoIndex.open(tmp_path / "idx")
    np.testing.assert_allclose(again.streams["cam"].memory.matrix()[2], before, atol=1e-6)
    info = again.info()
    assert info["streams"]["cam"]["tokens"] <= 3
    assert info["streams"]["cam"]["covered_seconds"] == pytest.approx(48.0, abs=0.6)


def test_evicted_frames_fall_back_to_anchor_scores(
    tmp_path: Path, scene_video: tuple[Path, list[Path]]
) -> None:
    video, pics = scene_video
    idx = ingest(tmp_path / "idx", video, settings(grid=1, budget=16, store_bytes=0))
    image = np.asarray(Image.open(pics[1]).convert("RGB"))
    result = idx.query(Query(image=image))["cam"]
    assert result.answered_by == "anchor"
    assert all(m.answered_by == "anchor" for m in result.moments)
    assert any("evicted" in n for n in result.notes)
    idx.close()


def test_time_range_filter(tmp_path: Path, scene_video: tuple[Path, list[Path]]) -> None:
    video, pics = scene_video
    idx = ingest(tmp_path / "idx", video, settings(grid=1, budget=16))
    image = np.asarray(Image.open(pics[3]).convert("RGB"))
    result = idx.query(Query(image=image, start=0.0, end=16.0))["cam"]
    assert result.moments and all(m.start >= 0.0 and m.start < 16.0 for m in result.moments)
    assert result.coverage is not None and result.coverage.end == pytest.approx(16.0)
    idx.close()


def test_bad_queries_are_typed(tmp_path: Path, scene_video: tuple[Path, list[Path]]) -> None:
    video, _ = scene_video
    idx = ingest(tmp_path / "idx", video, settings(grid=2, budget=8))
    with pytest.raises(QueryError):
        idx.query(Query(text="   "))
    with pytest.raises(QueryError):
        idx.query(Query(text="x" * 5000))
    with pytest.raises(UnknownStreamError):
        idx.query(Query(text="a van", streams=["nope"]))
    idx.close()


def test_corrupt_video_keeps_what_was_stored(tmp_path: Path, scene_video: tuple[Path, list[Path]]) -> None:
    # A truncated Matroska file decodes its good part, then raises; what was
    # ingested before the damage stays in the memory and on disk.
    pics = scene_video[1]
    good = make_video(tmp_path / "good.mkv", [(8.0, p) for p in pics[:4]], fps=10, size=(320, 240))
    cut = truncate_copy(good.path, tmp_path / "cut.mkv", 0.5)
    idx = VideoIndex.create(tmp_path / "idx", settings(grid=1, budget=8))
    with pytest.raises(CorruptMediaError):
        idx.ingest(decode_frames(cut, stream="cam", short_side=224))
    covered = idx.streams["cam"].memory.spans()
    assert covered and covered[-1][1] > 4.0
    idx.close()
    again = VideoIndex.open(tmp_path / "idx")
    assert np.allclose(again.streams["cam"].memory.spans(), covered)
    with pytest.raises(CorruptMediaError):
        ingest(tmp_path / "idx2", random_bytes_file(tmp_path / "junk.mp4"), settings(grid=1, budget=8))


def test_missing_index_is_typed(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError):
        VideoIndex.open(tmp_path / "nothing")


def test_invalid_settings_in_index_json_are_typed_on_create_too(tmp_path: Path) -> None:
    VideoIndex.create(tmp_path, settings()).close()
    manifest = json.loads((tmp_path / "index.json").read_text())
    manifest["settings"]["index"]["budget"] = -5
    (tmp_path / "index.json").write_text(json.dumps(manifest))
    for reopen in (lambda: VideoIndex.open(tmp_path), lambda: VideoIndex.create(tmp_path, settings())):
        with pytest.raises(IndexStoreError, match=r"invalid settings: index\.budget: ") as info:
            reopen()
        assert "\n" not in str(info.value)  # one line, not pydantic's report


def test_cli_ingest_info_query(
    tmp_path: Path, scene_video: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    video, pics = scene_video
    root = tmp_path / "i"
    assert (
        main(
            ["ingest", str(video), "--index", str(root), "--budget", "4", "--model", "tiny-random", "--quiet"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (stream,) = info["streams"].values()
    assert stream["tokens"] <= 4 and stream["covered_seconds"] == pytest.approx(48.0, abs=0.6)
    assert info["meaningless"] is True
    assert main(["query", str(root), "--image", str(pics[2]), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["meaningless"] is True
    (res,) = answer["streams"].values()
    # One result model (agent.service.answer.QueryAnswer): moments at top level, coverage per stream.
    assert answer["moments"] and res["coverage"]["retained_fraction"] == pytest.approx(1.0)


def test_info_reads_the_index_files_and_loads_no_model(
    tmp_path: Path,
    scene_video: tuple[Path, list[Path]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    video, _ = scene_video
    root = tmp_path / "i"
    argv = ["ingest", str(video), "--index", str(root), "--budget", "4", "--model", "tiny-random", "--quiet"]
    assert main(argv) == 0
    idx = VideoIndex.open(root)
    want = idx.info()
    idx.close()
    capsys.readouterr()

    def no_model(cfg: EncoderConfig) -> None:
        raise AssertionError(f"vmr info loaded {cfg.model}")

    monkeypatch.setattr(encoder, "_CACHE", {})  # as a new process: nothing loaded yet
    monkeypatch.setattr(encoder, "_load", no_model)
    assert main(["info", str(root), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # Closing saved the index again (state.json's saved_at may change its length by a byte).
    assert got.pop("bytes_on_disk") == pytest.approx(want.pop("bytes_on_disk"), abs=64)
    assert got == want and got["streams"]["scenes"]["tokens"] <= 4
    assert main(["info", str(root)]) == 0
    assert "model: tiny-random" in capsys.readouterr().out
    assert main(["info", str(video), "--json"]) == 0  # a video file: probed, no model either
    assert json.loads(capsys.readouterr().out)["duration"] == pytest.approx(48.0, abs=0.2)
    (root / "index.json").write_text("{}")
    assert main(["info", str(root)]) == 2  # a damaged manifest: typed, one line
    assert "index.json" in capsys.readouterr().err


def test_real_model_without_weights_fails_with_instructions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "ingest",
            str(VIDEOS / "bikes.mp4"),
            "--index",
            str(tmp_path / "i"),
            "--model",
            "ViT-B-32",
            "--checkpoint",
            str(tmp_path / "missing.pt"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "weights_unavailable" in err and "--checkpoint" in err


def test_tiny_random_is_identical_across_processes() -> None:
    code = (
        "import numpy as np;from agent.config import EncoderConfig;from agent.models.encoder import load_encoder;"
        "e=load_encoder(EncoderConfig(model='tiny-random',allow_random=True));"
        "print(repr(float(e.encode_text(['a white van'])[0][:8].sum())))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(outs) == 1


def test_vmr_ingest_without_flags_keeps_an_index_built_with_smore_and_theta_095(
    tmp_path: Path, scene_video: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    video, _ = scene_video
    argv = ["ingest", str(video), "--index", str(tmp_path / "i"), "--budget", "4", "--model", "tiny-random"]
    assert main([*argv, "--quiet", "--representative", "smore", "--theta", "0.95"]) == 0
    # The CLI leaves --representative and --theta unset unless given: the index's own rules are kept.
    assert main([*argv, "--quiet", "--stream", "again"]) == 0
    index = VideoIndex.open(tmp_path / "i")
    assert {(s.memory.representative, s.memory.theta) for s in index.streams.values()} == {("smore", 0.95)}
    index.close()
    capsys.readouterr()
    assert main([*argv, "--quiet", "--representative", "mean"]) == 2
    # The refusal names what differs, built against asked.
    assert "index.representative: built 'smore', asked 'mean'" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "i"), "--json"]) == 0
    rules = {name: s["rules"] for name, s in json.loads(capsys.readouterr().out)["streams"].items()}
    assert {r["representative"] for r in rules.values()} == {"smore"} and {
        r["theta"] for r in rules.values()
    } == {0.95}
    assert {(r["merge"], r["scorer"], r["grid"]) for r in rules.values()} == {("cosine", "energy", 2)}
    assert main(["info", str(tmp_path / "i")]) == 0
    assert "merge cosine, representative smore, scorer energy, theta 0.95" in capsys.readouterr().out


def test_an_index_keeps_the_memory_rules_it_was_built_with(
    tmp_path: Path, scene_video: tuple[Path, list[Path]]
) -> None:
    # index.json records every setting, the memory rules included: an index built under an older
    # default (plain Ward or ward-young, SMORE's representative, theta 0.95) opens with those rules, and
    # its memories were written with them.
    video, _ = scene_video
    for name, old_merge in (("ward", "ward"), ("young", "ward-young")):
        root = tmp_path / name
        old_rules = {"merge": old_merge, "representative": "smore", "theta": 0.95}
        old = settings(grid=1, budget=3, fps=1.0, **old_rules)
        ingest(root, video, old).close()
        manifest = json.loads((root / "index.json").read_text())
        assert manifest["settings"]["index"]["merge"] == old_rules["merge"]
        again = VideoIndex.open(root)
        mem = again.streams["cam"].memory
        assert again.settings.index.merge == mem.merge == old_rules["merge"]
        assert mem.representative == "smore"
        again.close()
        # Ingesting more under today's defaults keeps the index's rules (left unset, as the CLI
        # leaves them); asking for another rule explicitly is refused, loudly, not switched.
        more = VideoIndex.create(root, settings(grid=1, budget=3, fps=1.0))
        mem = more.streams["cam"].memory
        assert (more.settings.index.merge, mem.merge) == (old_rules["merge"],) * 2
        assert more.settings.index.representative == old.index.representative == mem.representative
        assert more.settings.index.theta == mem.theta == 0.95
        more.close()
        with pytest.raises(ConfigError, match="other settings"):
            VideoIndex.create(root, settings(grid=1, budget=3, fps=1.0, merge="cosine"))
        with pytest.raises(ConfigError, match="other settings"):
            VideoIndex.create(root, settings(grid=1, budget=3, fps=1.0, representative="mean"))
        with pytest.raises(ConfigError, match="other settings"):
            VideoIndex.create(root, settings(grid=1, budget=3, fps=1.0, theta=1.0))
    # A ward-young index.json reads back through the config's MergeRule literal.
    dumped = json.loads(json.dumps(settings(merge="ward-young").model_dump(mode="json")))
    assert Settings.model_validate(dumped).index.merge == "ward-young"


def test_an_index_json_older_than_the_merge_rules_reads_as_smores_rules(
    tmp_path: Path, scene_video: tuple[Path, list[Path]]
) -> None:
    # index.json written before IndexConfig had merge and scorer: its memories merged SMORE's
    # most similar pair and scored the token, which is what a snapshot without those keys reads
    # as (agent.store.memory_store). The index must say the same, or its new streams (and vmr
    # info) take today's defaults while its old ones keep SMORE's: two rules in one index.
    video, _ = scene_video
    root = tmp_path / "old"
    ingest(root, video, settings(grid=1, budget=3, fps=1.0, merge="cosine", scorer="rep")).close()
    manifest = json.loads((root / "index.json").read_text())
    for key in ("merge", "scorer"):
        del manifest["settings"]["index"][key]
    (root / "index.json").write_text(json.dumps(manifest))
    opened = VideoIndex.open(root)
    rules = opened.settings.index
    mem = opened.streams["cam"].memory
    assert (rules.merge, rules.scorer) == (mem.merge, mem.scorer) == ("cosine", "rep")
    opened.close()
    more = VideoIndex.create(root, settings(grid=1, budget=3, fps=1.0))
    try:
        new = more.stream("new").memory
        assert (new.merge, new.scorer) == ("cosine", "rep")
    finally:
        more.close()


def test_a_memory_whose_rules_differ_from_index_json_keeps_its_own_and_says_so(
    tmp_path: Path, scene_video: tuple[Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    # index.json rewritten by a build that read a legacy index as that build's defaults: the
    # snapshot knows what its memory was built with, and the mismatch is not silent.
    video, _ = scene_video
    root = tmp_path / "mixed"
    ingest(root, video, settings(grid=1, budget=3, fps=1.0, representative="smore", merge="cosine")).close()
    manifest = json.loads((root / "index.json").read_text())
    manifest["settings"]["index"].update(merge="ward-young", representative="mean")
    (root / "index.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="agent.channels.visual"):
        opened = VideoIndex.open(root)
    try:
        mem = opened.streams["cam"].memory
        assert (mem.merge, mem.representative) == ("cosine", "smore")
    finally:
        opened.close()
    assert "cosine/energy/smore" in caplog.text and "ward-young/energy/mean" in caplog.text
