"""The text channels' size and lag in ``/metrics``: one gauge family each, labelled by stream and channel."""

from __future__ import annotations

from agent.channels.base import ChannelSize
from agent.service.metrics import ServiceMetrics
from agent.service.shard import ShardStats, StreamStats
from tests.agent.service.helpers import metric_samples


def test_text_channel_spans_bytes_and_lag_are_exported_per_stream_and_channel() -> None:
    sizes = {"speech": ChannelSize(3, 120, 12.5), "ocr": ChannelSize(1, 41, 0.0)}
    stats = ShardStats(
        streams={
            "cam": StreamStats(5, 0, 0, True, 3, 0, channels=sizes),
            "visual-only": StreamStats(5, 0, 0, True, 3, 0),
        }
    )
    samples = metric_samples(ServiceMetrics().render([stats], clients=0, watches=0).decode())
    speech, ocr = (("channel", "speech"), ("stream", "cam")), (("channel", "ocr"), ("stream", "cam"))
    assert samples["vmr_channel_spans", speech] == 3 and samples["vmr_channel_spans", ocr] == 1
    assert samples["vmr_channel_bytes", speech] == 120 and samples["vmr_channel_bytes", ocr] == 41
    assert samples["vmr_channel_lag_seconds", speech] == 12.5 and samples["vmr_channel_lag_seconds", ocr] == 0
    # A stream without text channels has no such series (not a misleading zero).
    assert not any(
        name.startswith("vmr_channel_") and ("stream", "visual-only") in labels for name, labels in samples
    )
