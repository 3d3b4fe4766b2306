"""What the live sources (RTSP, WHIP) share: a bridge read and its counters, the timeline's gaps.

Both hand media from a producer (a decode thread, an aiortc track reader) to
the consumer through a latest-wins :class:`~streams.bridge.Bridge` and place
it with a :class:`~streams.timeline.LiveClock`; the read, the counting and
the counters they expose are written once here.
"""

from __future__ import annotations

from streams.bridge import Bridge, BridgeClosed
from streams.media import AudioChunk, Media
from streams.source import Source
from streams.timeline import Gap, LiveClock


class LiveSource(Source):
    """A :class:`Source` fed through ``_bridge`` and timed by ``_clock`` (set by the subclass)."""

    _bridge: Bridge[Media]
    _clock: LiveClock
    frames_out: int
    """Frames handed to the consumer."""
    audio_out: int
    """Audio chunks handed to the consumer."""

    @property
    def dropped(self) -> int:
        """Sampled frames discarded because the consumer fell behind."""
        return self._bridge.dropped

    @property
    def gaps(self) -> list[Gap]:
        """Holes in the timeline left by reconnects or publisher changes."""
        return list(self._clock.gaps)

    async def _next_item(self) -> Media:
        """The next queued item, counted; StopAsyncIteration once the bridge is closed and drained."""
        try:
            item = await self._bridge.get()
        except BridgeClosed:
            raise StopAsyncIteration from None
        if isinstance(item, AudioChunk):
            self.audio_out += 1
        else:
            self.frames_out += 1
        return item
