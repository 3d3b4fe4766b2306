"""The needle latency rule of ``bench.service_load`` (:func:`bench.service_needles.latencies`), sans-I/O."""

from __future__ import annotations

from bench import service_needles


def test_latencies_count_needles_due_in_the_window_and_misses() -> None:
    """Each needle due inside the window is matched by its first moment, or counted missed."""
    every = service_needles.NEEDLE_EVERY
    assert (service_needles.NEEDLE_AT, every) == (6.0, 12.0)  # the walls below follow from these
    clocks = {"a": (1000.0, 0.0), "b": (1006.0, 0.0)}  # stream second 0 at walls 1000 and 1006
    window = (1000.0, 1000.0 + 2 * every)  # needles of a due at 1006, 1018; of b at 1012, 1024
    arrivals = [  # (stream, arrival wall, the moment's start in stream seconds)
        ("a", 1006.0 + 2.5, 6.0),
        ("a", 1006.0 + 2.9, 6.5),  # a second moment of the same needle: not a new needle
        ("b", 1012.0 + 14.0, 5.5),  # b's first needle, 14 s late: not charged to its second
        ("a", 1030.0 + 1.0, 30.0),  # the needle due at 1030: outside the window
    ]
    matched, missed = service_needles.latencies(arrivals, clocks, window)
    assert [(s, due, round(arr - due, 3)) for s, due, arr in matched] == [
        ("a", 1006.0, 2.5),
        ("b", 1012.0, 14.0),
    ]
    assert missed == 2  # a at 1018 and b at 1024 never matched
