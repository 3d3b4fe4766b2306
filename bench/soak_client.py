"""The soak's simulated websocket client (:mod:`bench.soak`): a standing image ``watch`` over
every stream and a request every ``every`` seconds (text and image queries alternately, every
fifth a ``streams.list``), counting what it sees in a shared :class:`Tally`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ProtocolError, TransportError
from agent.service.client import connect, recv, send
from agent.service.protocol import (
    ClientMessage,
    ErrorEvent,
    MomentEvent,
    QueryMsg,
    StreamsList,
    WatchMsg,
)

TEXTS = ("a person riding a bike", "a car on a street", "people walking", "a dog")
ANSWER_LIMIT = 60.0
"""Seconds a client waits for an answer before counting ``client_timeout``."""


@dataclass
class Tally:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    """Seconds per query sent after the warm-up."""
    queries: int = 0
    moments: int = 0
    """``moment`` events of the standing watches."""
    errors: Counter[str] = field(default_factory=Counter)


class Client:
    """One websocket client: a standing watch and a query every ``every`` seconds."""

    def __init__(self, index: int, url: str, photos: list[Path], every: float, tally: Tally) -> None:
        self.index = index
        self.url = url
        self.photos = photos
        self.every = every
        self.tally = tally
        self._pending: dict[str, asyncio.Future[bool]] = {}

    def _image(self, k: int) -> str:
        return base64.b64encode(self.photos[k % len(self.photos)].read_bytes()).decode()

    async def run(self, stop: asyncio.Event, measure_from: float) -> None:
        try:
            async with connect(self.url) as ws:
                reader = asyncio.create_task(self._read(ws), name=f"soak-reader-{self.index}")
                try:
                    await send(
                        ws, WatchMsg(id=f"w{self.index}", image=self._image(self.index), backward=False)
                    )
                    await self._requests(ws, stop, measure_from)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
        except (ProtocolError, TransportError):  # closed, or refused before it opened
            self.tally.errors["client_closed"] += 1

    async def _requests(self, ws: Any, stop: asyncio.Event, measure_from: float) -> None:
        for k in itertools.count():
            if stop.is_set():
                return
            rid = f"c{self.index}-{k}"
            msg: ClientMessage
            if k % 5 == 4:
                msg = StreamsList(id=rid)
            elif k % 2:
                msg = QueryMsg(id=rid, image=self._image(k), top_k=5)
            else:
                msg = QueryMsg(id=rid, text=TEXTS[k % len(TEXTS)], top_k=5)
            answered = asyncio.get_running_loop().create_future()
            self._pending[rid] = answered
            t0 = time.monotonic()
            await send(ws, msg)
            try:
                async with asyncio.timeout(ANSWER_LIMIT):
                    ok = await answered
            except TimeoutError:
                self.tally.errors["client_timeout"] += 1
                ok = False
            self._pending.pop(rid, None)
            if isinstance(msg, QueryMsg) and ok:
                self.tally.queries += 1
                if t0 >= measure_from:
                    self.tally.latencies.append(time.monotonic() - t0)
            try:  # wait out the period, or stop at once
                await asyncio.wait_for(stop.wait(), max(0.0, self.every - (time.monotonic() - t0)))
            except TimeoutError:
                pass

    async def _read(self, ws: Any) -> None:
        while True:
            event = await recv(ws)
            if isinstance(event, ErrorEvent):
                self.tally.errors[event.code] += 1
            elif isinstance(event, MomentEvent):
                self.tally.moments += 1
            future = self._pending.get(event.id or "")
            if future is not None and not future.done():
                future.set_result(not isinstance(event, ErrorEvent))
