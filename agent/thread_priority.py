"""The encoder's threads at a lower OS priority than the decoder's, for an archive pass (Linux).

Why: an archive pass is decode-bound (issue 11: the ingest thread waits on an
empty decode queue most of the pass) while the encoder's threads take cores
from FFmpeg's decoder threads. Linux schedules threads, not processes, and a
thread's niceness and policy are its own (``setpriority``/``sched_setscheduler``
on a thread id), so the encoder can yield to the decoder inside one process.
Only :meth:`agent.index.video_index.VideoIndex.ingest` does this; the live
service, whose bound is the encoder, never does.

Which threads: the encoder stage's own thread (it lowers itself when it
starts) and the threads an encoder's backend created while it loaded
(OpenVINO's TBB workers, torch's intra-op pool): :data:`COMPUTE_THREADS`
records every thread that appeared during :func:`agent.models.encoder.load_encoder`.
Threads a backend starts later are created by the (lowered) encoder thread and
inherit its priority.

Refusal is no error: an unprivileged process may raise its threads' niceness
but not lower it again, so :meth:`EncoderPriority.restore` may be refused
(those threads then stay lowered; a ``vmr ingest`` process ends anyway). Every
refusal is logged once per process and the pass goes on. Off Linux (no
``/proc/self/task``, no per-thread ``setpriority``) nothing is changed.

Neutral ground like :mod:`agent.process_memory`: the models layer records the
threads, the index layer lowers them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import SchedPolicy

log = logging.getLogger(__name__)

MAX_NICE = 19
_TASKS = Path("/proc/self/task")
_POLICIES = {
    "other": getattr(os, "SCHED_OTHER", None),
    "batch": getattr(os, "SCHED_BATCH", None),
    "idle": getattr(os, "SCHED_IDLE", None),
}
_warned: set[str] = set()
_warned_lock = threading.Lock()
_held: dict[int, tuple[int, int | None, int]] = {}
"""Threads lowered to be restored, process-wide: tid -> (niceness, policy before, passes holding it).
Two passes at once (two indexes ingesting in two threads) share the encoder's threads: the
second must neither lower them again nor have the first's restore undo its lowering."""
_held_lock = threading.Lock()


def _warn_once(kind: str, message: str, *args: object) -> None:
    with _warned_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    log.warning(message, *args)


def thread_ids() -> set[int]:
    """Native ids of this process's live threads (empty where ``/proc`` is absent)."""
    try:
        return {int(name) for name in os.listdir(_TASKS)}
    except OSError:
        return set()


def thread_name(tid: int) -> str:
    """The kernel's name of thread ``tid`` (``comm``; FFmpeg names its decoder threads ``av:...``)."""
    try:
        return (_TASKS / str(tid) / "comm").read_text().strip()
    except OSError:
        return ""


def thread_nice(tid: int) -> int:
    """Niceness of thread ``tid`` of this process (Linux: per thread). OSError when it is gone."""
    return os.getpriority(os.PRIO_PROCESS, tid)


class ComputeThreads:
    """Threads the encoders' backends created while loading (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tids: set[int] = set()

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Record the threads that appear while the body runs (an encoder's load).

        FFmpeg's decoder threads (named ``av:...``) are never recorded, should a
        decode start meanwhile: they are what the lowering makes room for.
        """
        before = thread_ids()
        try:
            yield
        finally:
            new = {tid for tid in thread_ids() - before if not thread_name(tid).startswith("av:")}
            with self._lock:
                self._tids |= new

    def live(self) -> set[int]:
        """The recorded threads still alive (threads of a closed pool drop out)."""
        alive = thread_ids()
        with self._lock:
            self._tids &= alive
            return set(self._tids)


COMPUTE_THREADS = ComputeThreads()
"""Every thread an encoder load created in this process (:func:`agent.models.encoder.load_encoder`)."""


@dataclass
class EncoderPriority:
    """Lowers threads by ``nice`` steps and/or to ``policy``; :meth:`restore` undoes what it did.

    ``applied`` maps each thread id lowered to the niceness it got (what the
    tests and the bench read back); ``refused`` and ``restore_refused`` count
    the threads the OS would not lower, or not put back.
    """

    nice: int = 0
    policy: SchedPolicy = "other"
    applied: dict[int, int] = field(default_factory=dict)
    refused: int = 0
    restore_refused: int = 0
    _previous: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        """Whether there is anything to change (Linux, and a nice step or a policy other than ``other``)."""
        return bool(thread_ids()) and (self.nice > 0 or self.policy != "other")

    def lower(self, tids: Iterable[int], *, restore: bool = True) -> None:
        """Lower each of ``tids``; with ``restore``, :meth:`restore` puts it back later."""
        if not self.active:
            return
        for tid in tids:
            self._lower_one(tid, restore=restore)

    def lower_current(self) -> None:
        """Lower the calling thread for the rest of its life (the encoder stage's thread starts with it)."""
        self.lower([threading.get_native_id()], restore=False)

    def restore(self) -> None:
        """Put every thread lowered with ``restore`` back as it was; refusals are logged once.

        A thread another pass still holds (:data:`_held`) stays lowered: the last pass restores it.
        """
        with self._lock:
            previous, self._previous = self._previous, set()
        for tid in previous:
            with _held_lock:
                nice, policy, holders = _held.pop(tid)
                if holders > 1:
                    _held[tid] = (nice, policy, holders - 1)
                    continue
            try:
                if policy is not None:
                    os.sched_setscheduler(tid, policy, os.sched_param(0))
                if thread_nice(tid) != nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:
                continue  # the thread ended
            except OSError as exc:
                self.restore_refused += 1
                _warn_once(
                    "restore",
                    "encoder threads stay at lower priority (the OS refused to raise it back: %s)",
                    exc,
                )

    def _lower_one(self, tid: int, *, restore: bool) -> None:
        if not restore:
            self._change(tid)
            return
        with _held_lock:  # check and lower at once: two passes must not both lower a thread
            if tid in self._previous:
                return
            held = _held.get(tid)
            if held is not None:  # lowered by a pass still running: hold it, do not lower it twice
                _held[tid] = (held[0], held[1], held[2] + 1)
                with self._lock, contextlib.suppress(OSError):
                    self._previous.add(tid)
                    self.applied[tid] = thread_nice(tid)  # as the first pass left it
                return
            before = self._change(tid)
            if before is not None:
                _held[tid] = (*before, 1)
                with self._lock:
                    self._previous.add(tid)

    def _change(self, tid: int) -> tuple[int, int | None] | None:
        """Lower ``tid``; its (niceness, policy) before, or None when it ended or the OS refused."""
        try:
            nice = thread_nice(tid)
            policy = os.sched_getscheduler(tid) if self.policy != "other" else None
            target = min(MAX_NICE, nice + self.nice)
            if self.policy != "other":
                wanted = _POLICIES[self.policy]
                if wanted is None:
                    raise OSError(f"no scheduling policy {self.policy!r} on this system")
                os.sched_setscheduler(tid, wanted, os.sched_param(0))
            if target != nice:
                os.setpriority(os.PRIO_PROCESS, tid, target)
        except ProcessLookupError:
            return None  # the thread ended meanwhile
        except OSError as exc:
            with self._lock:
                self.refused += 1
            _warn_once("lower", "could not lower the encoder threads' priority (%s): going on", exc)
            return None
        with self._lock:
            self.applied[tid] = target
        return nice, policy
