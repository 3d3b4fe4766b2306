"""The encoder's threads at lower priority during an archive pass: which threads, how, and refusals."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import agent.thread_priority as tp
from agent.channels.base import WorkItem
from agent.cli.main import build_parser
from agent.cli.options import settings_from_args
from agent.config import EncoderConfig, IndexConfig, Settings
from agent.index.video_index import VideoIndex
from agent.models.encoder import load_encoder
from agent.thread_priority import COMPUTE_THREADS, ComputeThreads, EncoderPriority
from streams.file import decode_frames
from tests.videos import make_video, photos

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread priority: Linux")


def stat_nice(tid: int) -> int:
    """Niceness as the kernel reports it in /proc (field 19 of stat), not through getpriority."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


@pytest.fixture
def parked() -> Iterator[int]:
    """The native id of a thread that waits until the test ends."""
    release, ready, tid = threading.Event(), threading.Event(), [0]

    def park() -> None:
        tid[0] = threading.get_native_id()
        ready.set()
        release.wait(10)

    th = threading.Thread(target=park, name="parked")
    th.start()
    ready.wait(10)
    yield tid[0]
    release.set()
    th.join()


def _nice_or(tid: int, default: int) -> int:
    """``stat_nice(tid)``, or ``default`` for a thread that ended meanwhile."""
    try:
        return stat_nice(tid)
    except OSError:
        return default


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tp, "_warned", set())


def test_config_takes_a_niceness_and_a_policy_and_rejects_the_rest() -> None:
    cfg = IndexConfig(encoder_nice=10, encoder_sched="idle")
    assert (cfg.encoder_nice, cfg.encoder_sched) == (10, "idle")
    assert (IndexConfig().encoder_nice, IndexConfig().encoder_sched) == (0, "other")
    for bad in ({"encoder_nice": -1}, {"encoder_nice": 20}, {"encoder_sched": "fifo"}):
        with pytest.raises(ValidationError):
            IndexConfig(**bad)  # type: ignore[arg-type]


def test_lower_adds_niceness_to_the_thread_and_restore_puts_it_back(parked: int) -> None:
    base = stat_nice(parked)
    prio = EncoderPriority(nice=5)
    prio.lower([parked])
    assert prio.applied == {parked: min(19, base + 5)} and prio.refused == 0
    assert stat_nice(parked) == min(19, base + 5)
    assert stat_nice(threading.get_native_id()) == stat_nice(os.getpid())  # only that thread
    prio.restore()
    if os.geteuid() == 0:  # unprivileged, the OS refuses to lower niceness again (logged, tested below)
        assert stat_nice(parked) == base


@pytest.mark.skipif(os.geteuid() != 0, reason="raising priority back needs privilege")
def test_overlapping_passes_lower_a_shared_thread_once_and_the_last_restore_puts_it_back(parked: int) -> None:
    # Two ingests in one process (two indexes in two threads) lower the same encoder threads.
    base = stat_nice(parked)
    first, second = EncoderPriority(nice=5), EncoderPriority(nice=5)
    first.lower([parked])
    second.lower([parked])
    assert stat_nice(parked) == min(19, base + 5)  # not lowered twice over
    first.restore()
    assert stat_nice(parked) == min(19, base + 5)  # the second pass still runs
    second.restore()
    assert stat_nice(parked) == base


def test_a_policy_is_set_per_thread_and_restored(parked: int) -> None:
    prio = EncoderPriority(policy="batch")
    prio.lower([parked])
    assert os.sched_getscheduler(parked) == os.SCHED_BATCH
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    prio.restore()
    assert os.sched_getscheduler(parked) == os.SCHED_OTHER  # back from batch: allowed unprivileged


def test_refusals_are_logged_once_and_are_no_error(
    parked: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_warnings: None
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tp.os, "setpriority", refuse)
    prio = EncoderPriority(nice=5)
    with caplog.at_level(logging.WARNING, logger=tp.__name__):
        prio.lower([parked])
        prio.lower([parked])
        prio.restore()
    assert prio.refused == 2 and prio.applied == {}
    assert len([r for r in caplog.records if "could not lower" in r.message]) == 1


def test_a_refused_restore_is_logged_once(
    parked: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_warnings: None
) -> None:
    prio = EncoderPriority(nice=3)
    prio.lower([parked])
    real = os.setpriority

    def refuse_lowering(which: int, who: int, value: int) -> None:
        if value < stat_nice(who):
            raise PermissionError(13, "Permission denied")
        real(which, who, value)

    monkeypatch.setattr(tp.os, "setpriority", refuse_lowering)
    with caplog.at_level(logging.WARNING, logger=tp.__name__):
        prio.restore()
    monkeypatch.undo()
    assert [r.message for r in caplog.records if "stay at lower priority" in r.message]
    assert prio.restore_refused == 1
    EncoderPriority(nice=0).restore()  # nothing lowered: nothing to do


def test_watch_records_the_threads_started_inside_it_and_forgets_ended_ones() -> None:
    watch, stop = ComputeThreads(), threading.Event()
    tids: list[int] = []
    with watch.watch():
        th = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), stop.wait(10)))
        th.start()
        while not tids:
            stop.wait(0.01)
    assert watch.live() == set(tids)
    stop.set()
    th.join()
    # join() returns when Python's thread state is released; the kernel task goes a moment later.
    for _ in range(500):
        if not watch.live():
            break
        stop.wait(0.01)
    assert watch.live() == set()


def test_an_archive_pass_runs_the_encoder_threads_at_the_niceness_it_reports(tmp_path: Path) -> None:
    # tiny-random on OpenVINO: its CPU plugin starts worker threads when it compiles.
    enc_cfg = EncoderConfig(
        model="tiny-random", allow_random=True, backend="openvino", threads=2, batch_size=2
    )
    load_encoder(enc_cfg)
    workers = COMPUTE_THREADS.live()
    assert workers, "loading an OpenVINO encoder starts threads and they are recorded"
    base = {tid: stat_nice(tid) for tid in workers}
    video = tmp_path / "clip.mp4"
    make_video(video, [(4.0, p) for p in photos(3, offset=20)], fps=10, size=(320, 240))
    settings = Settings(prescreen=enc_cfg, index=IndexConfig(fps=4.0, gate=False, encoder_nice=7))
    seen: dict[int, int] = {}  # each lowered thread's niceness while a batch was being encoded
    with VideoIndex.create(tmp_path / "idx", settings) as idx:
        encode = idx._workers["image"]

        def watched(items: list[WorkItem]) -> list[np.ndarray]:
            seen.update({tid: stat_nice(tid) for tid in idx.ingest_priority.applied})
            seen[threading.get_native_id()] = stat_nice(threading.get_native_id())
            return encode(items)

        idx._workers["image"] = watched
        idx.ingest(decode_frames(video, stream="cam", fps=4.0, short_side=idx.prescreen.image_size))
        prio = idx.ingest_priority
        assert idx.streams["cam"].stats.superimages > 0
    assert prio.refused == 0
    assert workers <= set(prio.applied)  # the backend's threads...
    assert len(set(prio.applied) - workers) == 1  # ...and the encoder stage's own thread
    assert set(seen) == set(prio.applied)  # the batches ran on the thread lowered
    own = stat_nice(threading.get_native_id())  # the encoder stage's thread starts at its creator's
    assert all(seen[tid] == nice == min(19, base.get(tid, own) + 7) for tid, nice in prio.applied.items())
    assert stat_nice(threading.get_native_id()) == stat_nice(os.getpid())  # the caller untouched
    if os.geteuid() == 0:
        assert {tid: stat_nice(tid) for tid in workers} == base  # restored after the pass


@pytest.mark.skipif(os.geteuid() != 0, reason="raising priority back needs privilege")
def test_threads_the_lowered_encoder_starts_during_a_pass_are_put_back_after_it(tmp_path: Path) -> None:
    # torch makes its intra-op pool on the first parallel op, from the (lowered) encoder thread.
    enc_cfg = EncoderConfig(model="tiny-random", allow_random=True, backend="torch", threads=2, batch_size=2)
    load_encoder(enc_cfg)
    own = stat_nice(threading.get_native_id())
    video = tmp_path / "clip.mp4"
    make_video(video, [(4.0, p) for p in photos(3, offset=20)], fps=10, size=(320, 240))
    settings = Settings(prescreen=enc_cfg, index=IndexConfig(fps=4.0, gate=False, encoder_nice=7))
    with VideoIndex.create(tmp_path / "idx", settings) as idx:
        idx.ingest(decode_frames(video, stream="cam", fps=4.0, short_side=idx.prescreen.image_size))
    lowered: dict[int, int] = {}
    for _ in range(500):  # the encoder stage's own thread ends (lowered for life) a moment after
        lowered = {tid: n for tid in tp.thread_ids() if (n := _nice_or(tid, own)) != own}
        if not lowered:
            break
        threading.Event().wait(0.01)
    assert lowered == {}


def test_niceness_zero_or_a_serial_ingest_leaves_every_thread_alone(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    make_video(video, [(2.0, p) for p in photos(2, offset=30)], fps=10, size=(160, 120))
    tiny = EncoderConfig(model="tiny-random", allow_random=True, batch_size=2)
    for name, nice, threaded in (("zero", 0, True), ("serial", 5, False)):
        settings = Settings(prescreen=tiny, index=IndexConfig(fps=4.0, encoder_nice=nice))
        with VideoIndex.create(tmp_path / name, settings) as idx:
            idx.encode_in_thread = threaded  # serial: the caller encodes, and it also decodes
            idx.ingest(decode_frames(video, stream="cam", fps=4.0, short_side=idx.prescreen.image_size))
            assert idx.ingest_priority.applied == {} and idx.streams["cam"].stats.superimages > 0


def test_the_niceness_may_differ_between_ingests_into_one_index(tmp_path: Path) -> None:
    tiny = EncoderConfig(model="tiny-random", allow_random=True)
    VideoIndex.create(tmp_path, Settings(prescreen=tiny, index=IndexConfig(encoder_nice=5))).close()
    again = Settings(prescreen=tiny, index=IndexConfig(encoder_nice=0, encoder_sched="batch"))
    VideoIndex.create(tmp_path, again).close()  # a run-time setting: no "other settings" error


def test_vmr_ingest_takes_the_niceness_and_defaults_to_zero() -> None:
    argv = ["ingest", "v.mp4", "--index", "i", "--model", "tiny-random", "--encoder-nice", "5"]
    assert settings_from_args(build_parser().parse_args(argv)).index.encoder_nice == 5
    assert settings_from_args(build_parser().parse_args(argv[:-2])).index.encoder_nice == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv[:-1], "20"])
