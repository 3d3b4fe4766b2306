"""bench.memtrace: the growth between two marks names the allocating line and the growing type."""

from __future__ import annotations

from bench.memtrace import MemTrace


class Growing:
    """A type whose population grows between the marks."""

    def __init__(self) -> None:
        self.payload = bytearray(4096)


def test_growth_between_marks_is_reported_by_site_and_type() -> None:
    trace = MemTrace(top=5, frames=5)
    trace.start()
    kept = [Growing()]
    trace.mark()
    kept += [Growing() for _ in range(500)]  # ~2 MiB allocated on this line
    report = trace.report()
    assert len(kept) == 501
    assert report["traced_growth_mib"] >= 1.5
    top = report["top_sites"][0]
    assert top["growth_kib"] >= 1500 and __file__ in top["traceback"][0]
    assert {"type": "Growing", "count_diff": 500, "count": 501} in report["top_types"]
