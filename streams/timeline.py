"""Stream time, owned in one place.

* :class:`LiveClock` — inside a live source: maps each session's raw
  timestamps onto one monotonic timeline that survives reconnects, frames
  without pts (a reconnect leaves a gap as long as it really took), stray
  sender timestamps (clamped to arrival, counted) and sender clocks that
  jump or restart (a new piece continuing at real elapsed time).
* :class:`Pacer` — real-time pacing of a replay: wait until a frame's time
  has come on the loop's clock. Written once; used by
  :class:`~streams.file.FileSource` (``realtime=True``) and by
  :class:`Timeline`.
* :class:`Timeline` — one stream across the sources it opens over its life
  (restarts, loop passes): a source's own times plus an offset give stream
  time; frames at or before the resume point (already stored before a
  restart) are skipped; a live source that restarts its clock at 0 is
  re-anchored after the stored timeline, leaving the real gap; a replay
  loop continues after the previous pass; recordings with a known start
  get wall times from it. A service asks it for each frame's ``(t, wall)``
  and never adjusts time itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_MIN_STEP = 1e-3
"""Smallest forward step (seconds) between two emitted frames: keeps time strictly increasing."""

MIN_RESTART_GAP = 1.0
"""Seconds left between a stored timeline and a live source restarted after it."""


@dataclass(slots=True)
class Gap:
    """A hole in a live stream's timeline (a reconnect or a pts jump)."""

    start: float
    end: float


@dataclass
class LiveClock:
    """One monotonic timeline across sessions (reconnects) of a live source.

    Each session reports raw times (seconds from its own first pts) or None
    when a frame has no pts. The first frame of the first session is at 0.

    Rules (arrival time is the judge of a sender's timestamp):

    * **Fits.** A frame's raw time fits the current piece of timeline when,
      measured from the last frame that fitted, it went forward (or back by
      at most :attr:`max_back`, reordering jitter) and did not run ahead of
      the arrival time that passed by more than :attr:`max_lead` seconds.
      Running *behind* arrival is allowed: a stall delivers late footage.
      A fitting frame gets ``raw + offset``, so stream time follows the
      footage and never runs faster than it.
    * **Stray.** A frame that does not fit (a camera stamping one frame an
      hour away from its neighbours) is *clamped*: placed by arrival, at the
      previous time plus the arrival time that passed. Counted in
      :attr:`clamped`; the next fitting frame is judged against the last
      fitting one, so one stray moves nothing.
    * **Jump.** When :attr:`persist` stray frames in a row fit each other,
      the sender's clock really jumped (or restarted): a new piece of
      timeline starts there, continuing at the real elapsed (arrival) time.
      Counted in :attr:`jumps`. No frame is dropped because its pts is below
      an old maximum.
    * **Session.** A new session (:meth:`new_session`) re-anchors so that it
      continues after the last emitted time by the *wall-clock time that
      really passed* — a reconnect that took 4 s leaves a 4 s gap, recorded
      in :attr:`gaps`.
    * **No pts.** A frame without pts is placed by arrival (previous time plus
      the elapsed arrival time), never before its predecessor.

    Emitted times are strictly increasing (at least 1 ms apart).
    """

    max_lead: float = 2.0
    """Seconds a sender's clock may run ahead of arrival time between two fitting frames."""
    max_back: float = 0.5
    """Seconds a sender's clock may step back and still fit (placed just after its predecessor)."""
    persist: int = 3
    """Stray frames in a row, fitting each other, that make a new piece of timeline."""
    last_t: float | None = None
    gaps: list[Gap] = field(default_factory=list)
    clamped: int = 0
    """Frames whose sender timestamp was stray, placed by arrival instead."""
    jumps: int = 0
    """New pieces of timeline started because a sender's clock jumped and stayed there."""
    _offset: float | None = None
    _ref: tuple[float, float] | None = None  # (raw, arrival) of the last frame that fitted
    _stray: list[tuple[float, float]] = field(default_factory=list)  # strays in a row, fitting each other
    _last_arrival: float | None = None
    _new_session: bool = False

    def new_session(self) -> None:
        """A new connection starts: its raw times restart from anything."""
        self._offset = None
        self._ref = None
        self._stray.clear()
        self._new_session = self.last_t is not None

    def fits(self, raw: float, arrival: float, ref: tuple[float, float]) -> bool:
        """Whether raw time ``raw`` arriving at ``arrival`` continues the frame ``ref`` = (raw, arrival)."""
        d_raw = raw - ref[0]
        return d_raw >= -self.max_back and d_raw - (arrival - ref[1]) <= self.max_lead

    def map(self, raw: float | None, arrival: float) -> float:
        """Stream time of a frame with raw session time ``raw`` arriving at ``arrival`` (monotonic s)."""
        if self.last_t is None or self._last_arrival is None:
            expected = 0.0
        else:
            expected = self.last_t + max(arrival - self._last_arrival, _MIN_STEP)
        t = expected if raw is None else self._place(raw, arrival, expected)
        if self.last_t is not None:
            if self._new_session:
                self.gaps.append(Gap(self.last_t, t))
            t = max(t, self.last_t + _MIN_STEP)
        self._new_session = False
        self.last_t = t
        self._last_arrival = arrival
        return t

    def _place(self, raw: float, arrival: float, expected: float) -> float:
        if self._offset is None or self._ref is None:  # first frame of a session: anchor here
            self._anchor(raw, arrival, expected)
            return expected
        if self.fits(raw, arrival, self._ref):
            self._ref = (raw, arrival)
            self._stray.clear()
            return raw + self._offset
        if self._stray and self.fits(raw, arrival, self._stray[-1]):
            self._stray.append((raw, arrival))
        else:
            self._stray = [(raw, arrival)]
        if len(self._stray) >= self.persist:
            self.jumps += 1
            self._anchor(raw, arrival, expected)
        else:
            self.clamped += 1
        return expected

    def _anchor(self, raw: float, arrival: float, t: float) -> None:
        self._offset = t - raw
        self._ref = (raw, arrival)
        self._stray.clear()


class Pacer:
    """Waits so that frames come out at stream speed (a recording replayed as if live).

    The first paced frame fixes the origin; each later frame at stream time
    ``t`` is released ``t - t0`` seconds after it on ``clock`` (the loop's
    monotonic time by default). Frames that are late are released at once.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._origin: tuple[float, float] | None = None  # (clock time, stream time) of the first frame

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def delay(self, t: float) -> float:
        """Seconds to wait before releasing the frame at stream time ``t`` (0 if due)."""
        now = self._now()
        if self._origin is None:
            self._origin = (now, t)
            return 0.0
        return max(0.0, self._origin[0] + (t - self._origin[1]) - now)

    async def wait(self, t: float) -> None:
        """Sleep until the frame at stream time ``t`` is due."""
        delay = self.delay(t)
        if delay > 0:
            await asyncio.sleep(delay)


class Timeline:
    """Stream time of one stream across every source it opens.

    ``resume``: latest stream time already stored (frames at or before it are
    skipped; None for a fresh stream). ``offset``: source time + offset =
    stream time (persisted for replay loops). ``last_wall``: wall time of the
    last stored frame (sizes the gap a restarted live source leaves).
    ``wall_origin``: Unix time of stream second 0 for recordings with a known
    start. ``realtime``: pace frames at stream speed. ``now`` is the wall
    clock (injectable for tests).
    """

    def __init__(
        self,
        *,
        resume: float | None = None,
        offset: float = 0.0,
        last_wall: float | None = None,
        wall_origin: float | None = None,
        realtime: bool = False,
        now: Callable[[], float] = time.time,
        pace_clock: Callable[[], float] | None = None,
    ) -> None:
        self.resume = resume
        self.offset = offset
        self.last_t: float | None = resume
        self._last_wall = last_wall
        self._wall_origin = wall_origin
        self._realtime = realtime
        self._now = now
        self._pacer = Pacer(pace_clock) if realtime else None

    def source_start(self) -> float | None:
        """Where in its own seconds a resumable source need not deliver before (None: from its start)."""
        if self.resume is None:
            return None
        return max(0.0, self.resume - self.offset)

    def open_source(self, *, restarts_clock: bool) -> None:
        """A source opens. One that restarts its clock at 0 (live) continues after what is stored.

        The gap left is the wall time since the last stored frame (at least
        :data:`MIN_RESTART_GAP`), so the restart shows as the hole it was.
        """
        if not restarts_clock or self.resume is None:
            return
        gap = max(MIN_RESTART_GAP, self._now() - self._last_wall) if self._last_wall else MIN_RESTART_GAP
        self.offset = self.resume + gap
        self.resume = None

    def next_pass(self, period: float) -> None:
        """A replay loop starts over: the next pass continues one sample period after this one."""
        self.offset = (self.last_t or 0.0) + period
        self.resume = None

    async def stamp(self, t: float, wall: float | None) -> tuple[float, float | None] | None:
        """Stream ``(t, wall)`` of a frame at source time ``t``, once it is due.

        None when the frame is already stored (before the resume point): it
        is skipped without waiting. A realtime replay waits here until the
        frame's time has come, so its wall time is the time it was released.
        """
        st = t + self.offset
        if self.resume is not None and st <= self.resume:
            return None
        self.last_t = st if self.last_t is None else max(self.last_t, st)
        if self._pacer is not None:
            await self._pacer.wait(st)
        return st, self._wall(st, wall)

    def place(self, t: float, wall: float | None) -> tuple[float, float | None] | None:
        """Stream ``(t, wall)`` of media that rides along with the frames (audio chunks).

        Same offset, resume point and wall rule as :meth:`stamp`, but no
        pacing and no effect on the clock: the frames own the timeline.
        """
        st = t + self.offset
        if self.resume is not None and st <= self.resume:
            return None
        return st, self._wall(st, wall)

    def _wall(self, st: float, wall: float | None) -> float | None:
        if self._wall_origin is not None:
            return self._wall_origin + st
        if self._realtime:
            return self._now()  # a paced replay is "live" now
        return wall
