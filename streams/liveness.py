"""How long a live source waits before it calls a peer dead: deadlines that learn the camera.

Sans-I/O: the RTSP worker reports what it sees (frames and their arrival,
keyframes, opens and reads that timed out) and asks for the three deadlines
before each connection. Fixed timeouts turn slow but healthy cameras (one
frame, or one keyframe, every 10 s) into reconnect loops; these rules do not.

* **Socket (liveness).** ``max(read_timeout, 1.5 × the longest recent
  frame interval)`` seconds without *any* byte from the peer — RTP or RTCP
  — and the connection is dead. This is FFmpeg's RTSP ``timeout`` option
  (socket I/O), the only place where RTCP sender reports can count as
  liveness: FFmpeg consumes them inside ``av_read_frame`` and PyAV's own
  deadline restarts only when a media packet comes out.
* **Frame.** PyAV's read deadline (no media packet for that long) is
  ``max(read_timeout, 3 × the longest of the last 32 frame intervals)``;
  before any interval is known, ``3 × read_timeout``. A session that ends
  on a read timeout after delivering frames doubles this and the socket
  deadline for the next one (the camera is slower than we knew). PyAV fixes the deadline when a
  container opens, so it adapts from one connection to the next.
* **Picture.** A session that decodes no picture for the frame deadline
  plus the longest keyframe interval seen (``open_timeout`` while none has
  been seen) ends: a stream that starts between keyframes without SPS/PPS
  in its SDP waits for the next keyframe, not forever.
* **Open.** ``open_timeout``, doubled after each open that timed out (a
  probe that needs a keyframe, or two frames of a slow camera), and at
  least twice the longest keyframe interval plus ``read_timeout`` once
  keyframes were seen.

Every deadline is capped at :attr:`Deadlines.cap` seconds. The numbers are
in :meth:`Deadlines.to_dict` for status.
"""

from __future__ import annotations

from collections import deque

FRAME_FACTOR = 3.0
"""Frame deadline = this many times the longest recent frame interval."""
HISTORY = 32
"""Frame intervals remembered."""


class Deadlines:
    """Open, frame and socket deadlines (seconds) of one live source, learnt from its frames.

    ``open_timeout`` and ``read_timeout`` are the floors (per-stream settings);
    raises ValueError unless ``0 < floors <= cap``.
    """

    def __init__(self, open_timeout: float, read_timeout: float, cap: float = 300.0) -> None:
        if not (0 < open_timeout <= cap and 0 < read_timeout <= cap):
            raise ValueError(f"need 0 < open_timeout, read_timeout <= {cap}")
        self.open_floor = open_timeout
        self.read_floor = read_timeout
        self.cap = cap
        self._intervals: deque[float] = deque(maxlen=HISTORY)
        self._last_arrival: float | None = None
        self._last_key: float | None = None
        self._key_interval = 0.0  # longest keyframe interval seen
        self._open_doubled = 1.0
        self._frame_learnt = 0.0  # frame deadline after reads that timed out
        self._socket_learnt = 0.0  # socket deadline after reads that timed out

    @property
    def socket_timeout(self) -> float:
        """Seconds without any byte (RTP or RTCP) after which the connection is dead."""
        base = max(self.read_floor, 1.5 * max(self._intervals)) if self._intervals else self.read_floor
        return min(self.cap, max(base, self._socket_learnt))

    @property
    def frame_timeout(self) -> float:
        """Seconds without a media packet after which the session ends (set at each open)."""
        if self._intervals:
            base = max(self.read_floor, FRAME_FACTOR * max(self._intervals))
        else:
            base = FRAME_FACTOR * self.read_floor
        return min(self.cap, max(base, self._frame_learnt))

    @property
    def picture_timeout(self) -> float:
        """Seconds without a decoded picture after which the session ends."""
        wait_key = self._key_interval if self._key_interval > 0 else self.open_floor
        return min(self.cap, self.frame_timeout + wait_key)

    @property
    def open_timeout(self) -> float:
        """Seconds an open (connect, describe, probe) may take."""
        learnt = 2.0 * self._key_interval + self.read_floor if self._key_interval > 0 else 0.0
        return min(self.cap, max(self.open_floor * self._open_doubled, learnt))

    def new_session(self) -> None:
        """A connection opened: intervals never span a reconnect."""
        self._last_arrival = None
        self._last_key = None

    def frame(self, arrival: float, keyframe: bool) -> None:
        """A picture arrived at ``arrival`` (monotonic seconds)."""
        if self._last_arrival is not None:
            self._intervals.append(max(0.0, arrival - self._last_arrival))
        self._last_arrival = arrival
        if keyframe:
            if self._last_key is not None:
                self._key_interval = max(self._key_interval, arrival - self._last_key)
            self._last_key = arrival

    def open_timed_out(self) -> None:
        """An open hit its deadline: the next one waits twice as long (up to the cap)."""
        self._open_doubled = min(self._open_doubled * 2.0, self.cap / self.open_floor)

    def read_timed_out(self) -> None:
        """A session that had delivered frames timed out reading: double both read deadlines next time."""
        self._frame_learnt = min(self.cap, 2.0 * self.frame_timeout)
        self._socket_learnt = min(self.cap, 2.0 * self.socket_timeout)

    def to_dict(self) -> dict[str, float]:
        """The deadlines now, for status (seconds, rounded to ms)."""
        return {
            "open_timeout": round(self.open_timeout, 3),
            "frame_timeout": round(self.frame_timeout, 3),
            "socket_timeout": round(self.socket_timeout, 3),
        }
