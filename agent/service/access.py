"""What a client may ask the service to read: the source policy of ``streams.add``.

The operator decides which inputs the service reads (``[service.sources]``);
a client's stream spec is admitted by :meth:`SourcePolicy.admit` before it
reaches the serving façade. Streams the operator wrote in the config file
do not pass through here.

* **Paths** (``file``, ``segments`` and any kind whose spec is a
  :class:`~streams.source.RecordingSpec`) must lie under a configured media
  root once every symlink is resolved; a ``..`` component is refused
  outright; a relative path is looked up under each root in order. The spec
  that runs carries the resolved absolute path, so FFmpeg never sees a
  protocol prefix (``concat:``, ``subfile,,…:``) or a link that changes
  later. A path that is missing, outside the roots, of the wrong type
  (folder for ``file``) or unreadable gets one error, same code and message
  (:class:`~agent.errors.SourceError`, code ``source``, the code a missing
  input always had): no existence oracle. The refusals below are
  :class:`~agent.errors.SourceNotAllowedError` (``source_not_allowed``).
  No roots (the default): clients may add no file or segment stream.
* **Container formats.** ``video_formats`` (FFmpeg demuxer names) go to
  FFmpeg itself as ``format_whitelist`` (with ``protocol_whitelist=file``):
  FFmpeg refuses any other demuxer right after probing, before its header
  is read, so a playlist (ffconcat, HLS) named ``.mp4`` never opens what it
  lists, and a ``.nfo`` (``tty``) or a picture (``png_pipe``…) is never
  rendered as video. A ``file`` is probed so (in a thread) when added; a
  file FFmpeg cannot open at all is let through: the stream then fails with
  ``corrupt_video`` as before, which reveals nothing a root does not allow.
  The list is written into the admitted spec (``formats`` of
  :class:`~streams.file.FileSpec` and :class:`~streams.segments.SegmentsSpec`,
  narrowed by the client's own list if any, kept across restarts), so every
  later open applies it too: a file replaced after it was added fails with
  ``source_not_allowed`` on its next open (loop, restart), and a segment of
  another format is skipped and counted (``segments_refused``).
* **RTSP hosts.** With ``rtsp_hosts`` set, the URL's host must be listed
  (``host`` for any port, ``host:port`` for one). Whether set or not, the
  service's own listening ports are refused unless listed as ``host:port``:
  the service must not be pointed at itself. Names are compared as written,
  without DNS (a lookup would block and could be rebound).
* **Rate.** Each client *address* may add ``add_burst`` streams at once and
  ``adds_per_minute`` sustained (:class:`TokenBucket`), over all its
  connections: a client that reconnects keeps its spent budget. Keyed by
  address (an IPv6 one by its /64 prefix, what one host is given) because the service has one token (every authenticated client is
  the same principal). The table holds ``add_table`` addresses, least
  recently used forgotten first; a forgotten address starts full again,
  which costs an attacker that many addresses (on one machine the whole of
  127.0.0.0/8 is loopback: the cap on streams still binds). Behind a reverse
  proxy every client shares the proxy's budget. The cap on the number of
  streams is applied by :meth:`agent.service.serving.Serving.add_stream`.

Other kinds (WHIP, plug-ins) are the operator's installed code and pass as
they are.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import LimitExceededError, SourceError, SourceNotAllowedError
from agent.service.auth import client_key
from agent.service.config import SourcesConfig, StreamSpec, parse_spec
from streams.decode import open_media
from streams.errors import FormatNotAllowedError, StreamError
from streams.file import FileSpec
from streams.rtsp import RTSPSpec
from streams.segments import SegmentsSpec
from streams.source import RecordingSpec
from streams.urls import mask_url

SHOWN = 200
"""Characters of a client's path or URL echoed back in an error."""
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def _host_port(entry: str) -> tuple[str, int | None]:
    """``host`` or ``host:port`` (IPv6 in brackets) -> (lower-case host, port or None)."""
    parts = urlsplit("//" + entry.strip())
    return (parts.hostname or "").lower(), parts.port


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; sans-I/O (``now`` given)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class SourcePolicy:
    """Admits client stream specs under ``[service.sources]``; see the module docstring."""

    def __init__(self, cfg: SourcesConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        # Resolved once: a root that is itself a symlink compares by its target.
        self.roots = [Path(root).resolve() for root in cfg.media_roots]
        self.formats = frozenset(cfg.video_formats)
        self.hosts = None if cfg.rtsp_hosts is None else [_host_port(h) for h in cfg.rtsp_hosts]
        self.own_ports: set[int] = set()
        """The service's listening ports (filled in by the server once bound)."""
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        """``streams.add`` budget per client address, least recently used first."""

    def spend_add(self, address: str) -> None:
        """Count one ``streams.add`` of the client at ``address`` (its IP, every connection of it
        together; IPv6 by its /64, :func:`~agent.service.auth.client_key`); LimitExceededError over
        the rate."""
        now, key = self.clock(), client_key(address)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.cfg.adds_per_minute / 60.0, self.cfg.add_burst, now)
            while len(self._buckets) >= self.cfg.add_table:
                self._buckets.popitem(last=False)
        self._buckets[key] = bucket  # (re)inserted last: the most recently used
        if not bucket.take(now):
            raise LimitExceededError(
                f"too many streams.add: at most {self.cfg.add_burst} at once, "
                f"{self.cfg.adds_per_minute:g} per minute"
            )

    async def admit(self, raw: dict[str, Any]) -> StreamSpec:
        """The spec of a client's ``streams.add``, checked (paths resolved); ConfigError when invalid,
        SourceNotAllowedError when outside the policy. Filesystem work runs in a thread."""
        spec = parse_spec(raw)
        if isinstance(spec, RecordingSpec):
            return await asyncio.to_thread(self._admit_recording, spec)
        if isinstance(spec, RTSPSpec):
            self._check_rtsp(spec.url)
            return self._capped(spec)
        return spec

    def _capped(self, spec: RTSPSpec) -> RTSPSpec:
        """A client's camera gives up after ``reconnect_attempts`` failures in a row (its own
        ``retries`` may only be lower); written into the spec so the cap survives restarts."""
        cap = self.cfg.reconnect_attempts
        if cap is None:
            return spec
        retries = cap if spec.retries is None else min(spec.retries, cap)
        return spec.model_copy(update={"retries": retries})

    # ---------------------------------------------------------------- paths
    def _admit_recording(self, spec: RecordingSpec) -> StreamSpec:
        # Not even the path is echoed: the answer is byte for byte the same for every refused path.
        refused = SourceError("no such file or folder under the allowed media roots")
        real = self._media_path(spec.path)
        if real is None or not os.access(real, os.R_OK | (os.X_OK if real.is_dir() else 0)):
            raise refused  # unreadable too: the same answer as missing
        admitted = spec.model_copy(update={"path": str(real), **self._open_formats(spec)})
        try:
            admitted.check_input()  # the kind's own check: a file for ``file``, a folder for ``segments``
        except StreamError:
            raise refused from None  # same error as a forbidden path
        if real.is_file():
            self._check_format(real, spec.path)
        return admitted

    def _open_formats(self, spec: RecordingSpec) -> dict[str, list[str]]:
        """The demuxers FFmpeg may open a client's file or segments with, at every open (a client
        may narrow them); written into the spec so restarts and loops keep them."""
        if not isinstance(spec, SegmentsSpec | FileSpec):
            return {}
        asked = self.formats if spec.formats is None else self.formats & set(spec.formats)
        return {"formats": sorted(asked)}

    def _media_path(self, given: str) -> Path | None:
        """The resolved path of ``given`` if it exists under a root (None otherwise)."""
        path = Path(given)
        if not self.roots or ".." in path.parts:
            return None
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            try:
                real = candidate.resolve()
                inside = any(real.is_relative_to(root) for root in self.roots)
                if inside and real.exists():
                    return real
            except (OSError, ValueError, RuntimeError):  # NUL byte, symlink loop, permission
                continue
        return None

    def _check_format(self, path: Path, given: str) -> None:
        # FFmpeg gets the allow-list: a playlist named .mp4 is refused before it opens what it lists.
        try:
            container, _ = open_media(path, self.formats)
        except FormatNotAllowedError:
            raise SourceNotAllowedError(
                f"{_shown(given)!r}: container format is not an allowed video format"
            ) from None
        except StreamError:
            return  # not openable as video at all: the stream fails with corrupt_video, as before
        container.close()

    # ----------------------------------------------------------------- RTSP
    def _check_rtsp(self, url: str) -> None:
        shown = _shown(mask_url(url))
        try:
            parts = urlsplit(url)
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            raise SourceNotAllowedError(f"{shown!r}: not a valid RTSP URL") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not host:
            raise SourceNotAllowedError(f"{shown!r}: not an rtsp:// or rtsps:// URL")
        port = port or DEFAULT_PORTS[scheme]
        explicit = self.hosts is not None and (host, port) in self.hosts
        if self.hosts is not None and not explicit and (host, None) not in self.hosts:
            raise SourceNotAllowedError(f"{shown!r}: host not in the allowed RTSP hosts")
        if port in self.own_ports and not explicit:
            raise SourceNotAllowedError(f"{shown!r}: that is the service's own port")
