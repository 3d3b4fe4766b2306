"""Prometheus metrics of the service, through ``prometheus_client``.

Each :class:`ServiceMetrics` has its own :class:`CollectorRegistry` (not the
process-global one), so several services in one process — tests, benches —
do not collide. The query latency is a real histogram observed as queries
finish; everything else is read at scrape time from the shards' statistics
by :class:`_StatsCollector`: frames ingested and dropped, reconnects, stream
up, memory tokens, encoder queue depth and the frame store's writing state
and skipped frames per stream (label ``stream``),
source events per stream and kind (segments lost or late, stray timestamps
clamped, ...: label ``event``), encoder passes, images and errors, failed /
retried / dropped work items per
stream and channel (labels ``stream``, ``channel``), the text channels' size and lag (spans and
bytes retained, seconds behind the ingested stream: labels ``stream``, ``channel``), connected
clients, active watches and uptime.

Health (:mod:`agent.service.health`): ``vmr_stream_up`` is 0 while a live
source reconnects; coverage gaps (count and seconds) and the age of the last
good snapshot per stream; ``vmr_errors_total`` counts failures by error code
(label ``code``) and where they happened (label ``scope``: ``request`` for
error events answered to clients, :meth:`ServiceMetrics.count_error`;
``stream`` for stream failures and failed snapshots, read from the shards).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.channels.base import WorkCounters
from agent.service.shard import ShardStats, StreamStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""``generate_latest`` writes the 0.0.4 text format; say so (not the library's newer default)."""


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """Everything the collector reports besides the latency histogram, at one instant."""

    shards: Sequence[ShardStats]
    clients: int
    watches: int
    uptime: float
    request_errors: dict[str, int]
    """Error events answered to clients, by code."""


_PER_STREAM: tuple[tuple[str, str, str, str], ...] = (
    ("vmr_frames_total", "counter", "Sampled frames ingested.", "frames"),
    ("vmr_frames_dropped_total", "counter", "Live frames dropped (latest wins).", "dropped"),
    (
        "vmr_stream_reconnects_total",
        "counter",
        "Live source sessions after the first (RTSP reconnects, WHIP republishes).",
        "reconnects",
    ),
    (
        "vmr_stream_up",
        "gauge",
        "1 while the stream runs, 0 while its live source reconnects and when done, failed or stopped.",
        "up",
    ),
    ("vmr_memory_tokens", "gauge", "Tokens retained in memory.", "tokens"),
    ("vmr_encoder_queue_depth", "gauge", "Super-images waiting for or in the encoder.", "encoder_queue"),
    (
        "vmr_frame_store_writing",
        "gauge",
        "1 while stored frames are written, 0 while paused after a write failure (disk full).",
        "store_writing",
    ),
    (
        "vmr_frame_store_skipped_frames_total",
        "counter",
        "Frames not stored (no thumbnail, no refinement) because of write failures.",
        "store_skipped",
    ),
    ("vmr_coverage_gaps", "gauge", "Holes in the memory's coverage (outages, drops).", "gaps"),
    ("vmr_coverage_gap_seconds", "gauge", "Seconds of holes in the memory's coverage.", "gap_seconds"),
    (
        "vmr_snapshot_age_seconds",
        "gauge",
        "Seconds since the stream's last good snapshot (since its start before the first).",
        "snapshot_age",
    ),
    (
        "vmr_stream_restarts_total",
        "counter",
        "Restarts of the stream elsewhere after its process or node died (Ray shards).",
        "restarts",
    ),
    (
        "vmr_stream_lost_seconds_total",
        "counter",
        "Wall seconds of ingest lost to those restarts (last snapshot to death).",
        "lost_seconds",
    ),
    (
        "vmr_stream_lost_frames_total",
        "counter",
        "Frames ingested after the last snapshot before a death, absent from the restored state.",
        "lost_frames",
    ),
)


_WORK: tuple[tuple[str, str, str], ...] = (
    ("vmr_work_failed_total", "failed", "Work item attempts that failed (a failed batch counts each item)."),
    ("vmr_work_retried_total", "retried", "Failed work items handed back for another attempt."),
    (
        "vmr_work_dropped_total",
        "dropped",
        "Work items given up after their last attempt (span not retained).",
    ),
)


_CHANNEL: tuple[tuple[str, str, str], ...] = (
    ("vmr_channel_spans", "spans", "Transcript utterances (speech) or on-screen text spans (ocr) retained."),
    ("vmr_channel_bytes", "bytes", "Bytes of the spans a text channel retains (as its budget counts them)."),
    (
        "vmr_channel_lag_seconds",
        "lag_seconds",
        "Stream seconds ingested minus the text channel's processed time (speech: buffered or with "
        "whisper; ocr: reads with Tesseract).",
    ),
)


class _StatsCollector:
    """Turns the latest :class:`ServiceStats` into metric families at scrape time."""

    def __init__(self) -> None:
        self.stats = ServiceStats((), 0, 0, 0.0, {})

    def collect(self) -> Iterable[Metric]:
        st = self.stats
        streams: dict[str, StreamStats] = {}
        for shard in st.shards:
            streams.update(shard.streams)
        for name, kind, help_text, attr in _PER_STREAM:
            fam: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                fam = CounterMetricFamily(name, help_text, labels=["stream"])
            else:
                fam = GaugeMetricFamily(name, help_text, labels=["stream"])
            for stream, s in sorted(streams.items()):
                fam.add_metric([stream], float(getattr(s, attr)))
            yield fam
        events = CounterMetricFamily(
            "vmr_source_events_total",
            "Source events by kind: segments lost, late, renamed or corrupt; stray timestamps clamped; "
            "clock jumps; undecodable packets; failed connections.",
            labels=["stream", "event"],
        )
        for stream, s in sorted(streams.items()):
            for event, count in sorted(s.source_events.items()):
                events.add_metric([stream, event], float(count))
        yield events
        yield CounterMetricFamily(
            "vmr_encoder_passes_total",
            "Encoder forward passes (batches).",
            value=sum(s.encoder_passes for s in st.shards),
        )
        yield CounterMetricFamily(
            "vmr_encoder_images_total",
            "Super-images encoded.",
            value=sum(s.encoder_images for s in st.shards),
        )
        yield CounterMetricFamily(
            "vmr_encoder_errors_total",
            "Failed encoder passes.",
            value=sum(s.encoder_errors for s in st.shards),
        )
        work: dict[tuple[str, str], WorkCounters] = {}
        for shard in st.shards:
            work.update(shard.work)
        for name, attr, help_text in _WORK:
            fam = CounterMetricFamily(name, help_text, labels=["stream", "channel"])
            for (stream, channel), c in sorted(work.items()):
                fam.add_metric([stream, channel], float(getattr(c, attr)))
            yield fam
        for name, attr, help_text in _CHANNEL:
            gauge = GaugeMetricFamily(name, help_text, labels=["stream", "channel"])
            for stream, s in sorted(streams.items()):
                for channel, size in sorted(s.channels.items()):
                    gauge.add_metric([stream, channel], float(getattr(size, attr)))
            yield gauge
        yield self._errors(streams)
        yield CounterMetricFamily(
            "vmr_shard_events_dropped_total",
            "Shard events (status, embeddings) dropped by a remote shard's bounded event queue.",
            value=sum(s.events_dropped for s in st.shards),
        )
        yield GaugeMetricFamily("vmr_clients", "Connected websocket clients.", value=st.clients)
        yield GaugeMetricFamily("vmr_watches", "Active standing queries.", value=st.watches)
        yield GaugeMetricFamily("vmr_uptime_seconds", "Seconds since the service started.", value=st.uptime)

    def _errors(self, streams: dict[str, StreamStats]) -> CounterMetricFamily:
        fam = CounterMetricFamily(
            "vmr_errors_total", "Failures by error code and scope.", labels=["code", "scope"]
        )
        by_code: Counter[str] = Counter()
        for s in streams.values():
            by_code.update(s.errors)
        for scope, counts in (("request", self.stats.request_errors), ("stream", by_code)):
            for code, n in sorted(counts.items()):
                fam.add_metric([code, scope], float(n))
        return fam


class ServiceMetrics:
    """The metrics registry of one service: a latency histogram and the stats collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.query_latency = Histogram(
            "vmr_query_latency_seconds",
            "One-shot query latency (to the refined answer).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_answer_latency = Histogram(
            "vmr_query_first_answer_seconds",
            "One-shot query latency to the first (prescreen, anchor-level) answer.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._collector = _StatsCollector()
        self.registry.register(self._collector)
        self.started = time.time()
        self.request_errors: Counter[str] = Counter()

    def count_error(self, code: str) -> None:
        """One more error event of ``code`` answered to a client (on the event loop)."""
        self.request_errors[code] += 1

    def render(self, shards: Sequence[ShardStats], *, clients: int, watches: int) -> bytes:
        """Prometheus text of everything, with ``shards`` as read just now."""
        self._collector.stats = ServiceStats(
            shards, clients, watches, time.time() - self.started, dict(self.request_errors)
        )
        return generate_latest(self.registry)
