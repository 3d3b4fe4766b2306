"""A new source kind is one module plus one registry line: a toy kind streamed through the service.

The kind below (spec + Source generating frames with numpy) lives only in this
test module; registering it is the one line after it. The service learns of
it through the registry alone: ``streams.add`` over the websocket on port 0,
then the frames are ingested into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from streams import registry
from streams.bridge import QueuePolicy
from streams.media import Frame, Media
from streams.registry import OpenContext
from streams.source import Source, SourceSpec, SourceState, SourceStats
from tests.agent.service.helpers import add, client, running, until


class ToySpec(SourceSpec):
    """Synthetic footage: ``frames`` noise pictures, ``1 / fps`` seconds apart."""

    kind: Literal["toy"]
    frames: int = Field(default=24, ge=1)
    seed: int = 0


class ToySource(Source):
    """Generates moving noise pictures; finite, so it ends with state ``done``."""

    queue_policy: ClassVar[QueuePolicy] = "block"

    def __init__(self, spec: ToySpec, ctx: OpenContext) -> None:
        self.spec = spec
        self.period = 1.0 / ctx.fps_of(spec)
        self.size = ctx.short_side
        self.rng = np.random.default_rng(spec.seed)
        self.sent = 0
        self.state: SourceState = "connecting"

    async def __anext__(self) -> Media:
        if self.state in ("done", "closed") or self.sent >= self.spec.frames:
            self.state = "done" if self.state != "closed" else "closed"
            raise StopAsyncIteration
        self.state = "streaming"
        image = self.rng.integers(0, 256, (self.size, self.size + 32, 3), dtype=np.uint8)
        frame = Frame(self.spec.id, self.sent * self.period, image)
        self.sent += 1
        return frame

    async def close(self) -> None:
        if self.state != "done":
            self.state = "closed"

    def stats(self) -> SourceStats:
        return SourceStats(
            self.state,
            frames=self.sent,
            progress=self.sent / self.spec.frames,
            extra={"seed": self.spec.seed},
        )


registry.register(ToySpec, ToySource)


async def test_a_toy_source_kind_streams_through_the_service(tmp_path: Path) -> None:
    async with running(tmp_path) as (svc, url), client(url) as ws:
        added = await add(ws, {"id": "toy1", "kind": "toy", "frames": 24, "seed": 3})
        assert added["stream"]["kind"] == "toy"
        done = await until(ws, "toy1", lambda s: s["status"] not in ("starting", "running"), limit=60)
        assert done["status"] == "done", done
        assert done["error"] is None
        assert done["frames"] == 24  # every generated frame reached ingest
        assert done["tokens"] > 0  # and the encoder committed them to memory
        assert done["progress"] == 1.0
        source = done["source"]  # the source's own statistics reach streams.list
        assert source["state"] == "done" and source["last_error"] is None
        assert source["queue_policy"] == "block" and source["frames"] == 24 and source["progress"] == 1.0
        assert source["seed"] == 3  # the kind's extras too
        assert done["last_time"] == 23 * 0.5  # the service's default 2 fps
        runner = svc.runners["toy1"]
        assert isinstance(runner.source, ToySource) and runner.source.stats().state == "done"
