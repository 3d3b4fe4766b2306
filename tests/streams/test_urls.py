"""Credentials masked wherever a URL is shown (streams.urls)."""

from __future__ import annotations

import pytest

from streams.urls import mask_text, mask_url


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("rtsp://admin:secret@10.0.0.5/live", "rtsp://admin:***@10.0.0.5/live"),
        # FFmpeg splits the authority at its last '@': the whole password is masked.
        ("rtsp://admin:Pa@ss99@127.0.0.1:9/x", "rtsp://admin:***@127.0.0.1:9/x"),
        ("rtsp://h/user=admin&password=Hunter2&channel=1", "rtsp://h/user=admin&password=***&channel=1"),
        ("rtsp://cam/live?token=abc123", "rtsp://cam/live?token=***"),
        ("rtsp://viewer@cam/live", "rtsp://viewer@cam/live"),  # a user alone is no secret
    ],
)
def test_mask_url(given: str, shown: str) -> None:
    assert mask_url(given) == shown


def test_mask_text_masks_every_url_of_a_line() -> None:
    line = "open failed: rtsp://u:p1@a/x, then rtsp://v:p2@b:554/y?pwd=p3"
    masked = mask_text(line)
    assert all(secret not in masked for secret in ("p1", "p2", "p3")) and masked.count("***") == 3
