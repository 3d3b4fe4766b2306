"""What a video file is: its video stream's header, and what its first picture shows.

:func:`probe` opens a file the way decoding does (:func:`streams.decode.open_media`:
cover art is never the video) and decodes its first picture, so an empty
video, a file with only cover art or an absurd size fails here, before a
caller creates anything, and the rotation a player applies is known.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from streams.decode import Picture, declared_duration, decode, frame_period, open_media
from streams.sampler import rotation_turns

__all__ = ["VideoInfo", "probe"]


@dataclass(frozen=True)
class VideoInfo:
    """What a file says about its video stream, and its first picture shows."""

    path: Path
    duration: float
    """Seconds (stream duration when known, else the container's; 0 if neither)."""
    fps: float | None
    width: int
    """Coded width in pixels (as stored, before rotation)."""
    height: int
    codec: str
    frames: int | None
    """Frame count declared by the container, when it declares one."""
    rotation: int = 0
    """Degrees counter-clockwise the display matrix turns the picture (0, 90, 180, 270)."""

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown: the coded size turned by :attr:`rotation`."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


def probe(path: Path, formats: Collection[str] | None = None) -> VideoInfo:
    """Read the header of ``path`` and decode its first picture: duration, rate, size, rotation, codec.

    Raises :class:`~streams.errors.SourceUnavailableError` for a missing file,
    :class:`~streams.errors.NoVideoStreamError` without video (or with cover art only),
    :class:`~streams.errors.EmptyMediaError` for a video stream without a frame,
    :class:`~streams.errors.FormatNotAllowedError` for a demuxer outside ``formats`` (None: any) and
    :class:`~streams.errors.CorruptMediaError` for anything else that is not decodable video.
    """
    container, stream = open_media(path, formats)
    try:
        rotation = 0
        pictures = decode(container, stream, label=path, check_truncation=False)
        for item in pictures:
            if isinstance(item, Picture):
                rotation = rotation_turns(item.frame) * 90
                break
        pictures.close()
        return VideoInfo(
            path=path,
            duration=declared_duration(container, stream),
            fps=1.0 / frame_period(stream),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            frames=stream.frames or None,
            rotation=rotation,
        )
    finally:
        container.close()
