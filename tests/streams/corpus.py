"""Builders of the real-world file corpus (issue 10): small inputs that show known photos at known seconds.

Each builder writes one input into a folder with PyAV (the ffmpeg command line
only where PyAV cannot: cover art and audio-only files with a picture) and
returns a :class:`Built`: the file and the photo shown in each scene, so a
test can query the index with the photo and check where it was found.

The inputs mirror what cameras, phones, screen recorders and archives
produce: concatenated MPEG-TS/PS files whose clock restarts, raw elementary
streams without timestamps, a longer audio track, cover art listed before
the video, rotation in the display matrix, degenerate sizes, frames held for
seconds, and a video stream header without a single frame.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

from tests.videos import DATA

Picture = npt.NDArray[np.uint8]
SIZE = (128, 96)
"""(width, height) of most inputs: small, so the corpus stays fast."""


@dataclass(frozen=True)
class Built:
    """One input of the corpus and the query photos of what it shows."""

    path: Path
    queries: dict[str, Path] = field(default_factory=dict)
    """Label -> photo file to query with (``--image``)."""


SKIMAGE = DATA / "skimage"
PHOTOS = ("astronaut", "coffee", "horse")
"""Three scikit-image photos far apart in any encoder's image space (label A, B, C)."""


def labelled_photos(folder: Path, labels: str = "ABC") -> dict[str, Path]:
    """Distinct photos, one per label, copied into ``folder`` as JPEG query files."""
    out = {}
    for label in labels:
        src = SKIMAGE / f"{PHOTOS['ABC'.index(label)]}.jpg"
        dst = folder / f"photo_{label}.jpg"
        if not dst.exists():
            shutil.copyfile(src, dst)
        out[label] = dst
    return out


def picture(photo: Path, size: tuple[int, int] = SIZE) -> Picture:
    """The photo resized to ``size`` (width, height) as RGB."""
    with Image.open(photo) as img:
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.uint8).copy()


Shot = tuple[float, float, Picture]
"""(start, end, picture): a scene shown from ``start`` to ``end`` seconds."""


def write(
    path: Path,
    shots: Sequence[Shot],
    *,
    fps: float = 10.0,
    codec: str = "libx264",
    fmt: str | None = None,
    pix_fmt: str = "yuv420p",
    time_base: Fraction = Fraction(1, 1000),
    rotation: int | None = None,
) -> None:
    """Encode ``shots``, each picture repeated at ``fps`` over its scene (a gap between scenes stays a gap).

    ``fps=0`` writes one frame per scene lasting the whole scene (held
    frames: a screen recording). ``rotation`` sets the display matrix
    (degrees, counter-clockwise, as FFmpeg's ``display_rotation``).
    """
    frames: list[tuple[float, float, Picture]] = []
    for start, end, pic in shots:
        step = (end - start) if fps <= 0 else 1.0 / fps
        n = max(1, round((end - start) / step))
        frames.extend((start + i * step, step, pic) for i in range(n))
    h, w = shots[0][2].shape[:2]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001) if fps > 0 else 1)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
        stream.codec_context.max_b_frames = 0
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        elif codec == "libx265":
            stream.options = {"preset": "ultrafast", "x265-params": "log-level=none"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        lasting: dict[int, int] = {}  # pts -> duration: encoders drop it on the packets they flush
        for t, step, pic in frames:
            frame = av.VideoFrame.from_ndarray(pic, format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            frame.duration = lasting[frame.pts] = round(step / time_base)
            _mux(container, stream.encode(frame), lasting)
        _mux(container, stream.encode(None), lasting)


def _mux(container: av.container.OutputContainer, packets: list[av.Packet], lasting: dict[int, int]) -> None:
    for packet in packets:
        if packet.pts is not None and packet.pts in lasting:
            packet.duration = lasting[packet.pts]
        container.mux(packet)


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg command line quietly (raises on failure)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True, timeout=60
    )


def scenes(
    folder: Path, seconds: float, labels: str = "ABC", size: tuple[int, int] = SIZE
) -> tuple[list[Shot], dict[str, Path]]:
    """One scene of ``seconds`` per label, back to back, and the query photos."""
    queries = labelled_photos(folder, labels)
    shots = [(i * seconds, (i + 1) * seconds, picture(queries[c], size)) for i, c in enumerate(labels)]
    return shots, queries


# ---------------------------------------------------------------- 1. clock restarts
def concatenated(
    folder: Path, suffix: str = ".ts", codec: str = "libx264", parts: int = 2, fps: float = 10.0
) -> Built:
    """Files each starting at PTS 0 (A for 5 s, then B for 5 s, ...), concatenated byte for byte."""
    labels = "ABC"[:parts]
    queries = labelled_photos(folder, labels)
    fmt = {".ts": "mpegts", ".mpg": "mpeg"}[suffix]
    out = folder / f"concat{parts}{suffix}"
    with out.open("wb") as joined:
        for c in labels:
            part = folder / f"part_{c}{suffix}"
            shot = (0.0, 5.0, picture(queries[c]))
            tb = Fraction(1, 90000) if codec == "libx264" else 1 / Fraction(fps)  # MPEG-2: one frame period
            write(part, [shot], fps=fps, codec=codec, fmt=fmt, time_base=tb)
            joined.write(part.read_bytes())
    return Built(out, queries)


def clock_jump(folder: Path, jump: float = 600.0) -> Built:
    """MPEG-TS: A for 5 s, then the clock jumps ``jump`` s and B plays 5 s (a real gap)."""
    queries = labelled_photos(folder, "AB")
    out = folder / "jump.ts"
    shots = [(0.0, 5.0, picture(queries["A"])), (5.0 + jump, 10.0 + jump, picture(queries["B"]))]
    write(out, shots, fmt="mpegts", time_base=Fraction(1, 90000))
    return Built(out, queries)


# ---------------------------------------------------------------- 2. raw streams
def raw_stream(folder: Path, fmt: str = "h264") -> Built:
    """A raw elementary stream at 10 fps, no container timestamps: A 0-4 s, B 4-8, C 8-12."""
    codec = {"h264": "libx264", "hevc": "libx265", "m4v": "mpeg4"}[fmt]
    shots, queries = scenes(folder, 4.0)
    out = folder / f"raw.{fmt}"
    write(out, shots, codec=codec, fmt=fmt, time_base=Fraction(1, 10))
    return Built(out, queries)


# ---------------------------------------------------------------- 3. complete or cut
def longer_audio(folder: Path, suffix: str = ".mkv", video: float = 6.0, audio: float = 10.0) -> Built:
    """A complete file whose audio track (a tone) outlasts the video: A 0-3 s, B 3-6 s."""
    shots, queries = scenes(folder, video / 2, "AB")
    silent = folder / f"video_only{suffix}"
    write(silent, shots)
    out = folder / f"long_audio{suffix}"
    codec = "libvorbis" if suffix == ".mkv" else "aac"
    tone = f"sine=frequency=440:duration={audio}"
    ffmpeg(
        "-i",
        silent,
        "-f",
        "lavfi",
        "-i",
        tone,
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "copy",
        "-c:a",
        codec,
        out,
    )
    return Built(out, queries)


def cut(folder: Path, suffix: str = ".mkv", keep: float = 0.5) -> Built:
    """A file killed part-way: the first ``keep`` of the bytes of A 0-3 s, B 3-6 s, C 6-9 s."""
    shots, queries = scenes(folder, 3.0)
    whole = folder / f"whole{suffix}"
    write(whole, shots, time_base=Fraction(1, 10) if suffix == ".avi" else Fraction(1, 1000))
    data = whole.read_bytes()
    out = folder / f"cut{suffix}"
    out.write_bytes(data[: int(len(data) * keep)])
    return Built(out, queries)


# ---------------------------------------------------------------- 4. cover art
def cover_first(folder: Path, suffix: str = ".mp4") -> Built:
    """Cover art (photo C, an attached picture) and the 8 s video: A 0-4 s, B 4-8 s.

    In MP4 the cover (iTunes ``covr``) is moved ahead of the video track, as
    taggers write it, so FFmpeg lists it as stream 0. Matroska keeps cover
    art as an attachment, which FFmpeg lists after the tracks.
    """
    shots, queries = scenes(folder, 4.0, "AB")
    video = folder / f"video{suffix}"
    write(video, shots)
    cover = labelled_photos(folder, "ABC")["C"]
    out = folder / f"cover_first{suffix}"
    if suffix == ".mkv":
        tag = ["-metadata:s:t", "mimetype=image/jpeg", "-metadata:s:t", "filename=cover.jpg"]
        ffmpeg("-i", str(video), "-map", "0", "-c", "copy", "-attach", str(cover), *tag, str(out))
        return Built(out, queries)
    pic = ["-disposition:v:0", "attached_pic"]
    ffmpeg("-i", str(cover), "-i", str(video), "-map", "0", "-map", "1", "-c", "copy", *pic, str(out))
    out.write_bytes(_udta_first(out.read_bytes()))
    return Built(out, queries)


def _boxes(data: bytes) -> list[bytes]:
    """The ISO-BMFF boxes (32-bit sizes) laid end to end in ``data``."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos : pos + size])
        pos += size
    return out


def _udta_first(data: bytes) -> bytes:
    """The file with ``moov``'s user data (where the cover lives) ahead of its tracks.

    ``moov`` keeps its size and ``mdat`` (written before it) its place, so
    every sample offset stays valid.
    """
    top = _boxes(data)
    for k, box in enumerate(top):
        if box[4:8] == b"moov":
            children = _boxes(box[8:])
            children.sort(key=lambda child: child[4:8] != b"udta")  # stable: udta first, the rest in order
            top[k] = box[:8] + b"".join(children)
    return b"".join(top)


def cover_only(folder: Path, suffix: str = ".mp3") -> Built:
    """A song with cover art and no video: its only picture is an attached one."""
    cover = labelled_photos(folder, "A")["A"]
    out = folder / f"song{suffix}"
    audio = ["-c:a", "libmp3lame"] if suffix == ".mp3" else ["-c:a", "aac"]
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=3",
        "-i",
        cover,
        "-map",
        "0",
        "-map",
        "1",
        *audio,
        "-c:v",
        "mjpeg" if suffix == ".mp3" else "copy",
        "-disposition:v:0",
        "attached_pic",
        out,
    )
    return Built(out, {})


# ---------------------------------------------------------------- 5. rotation
def rotated(
    folder: Path, suffix: str = ".mp4", degrees: int = 90, size: tuple[int, int] = (96, 128)
) -> Built:
    """A phone video stored sideways with a display matrix: upright it shows A 0-4 s, B 4-8 s.

    ``size`` is the *display* (width, height): portrait by default. The
    coded pictures are the upright ones turned by ``-degrees`` (FFmpeg's
    display rotation is counter-clockwise), so applying the matrix shows
    them upright. Also writes ``sideways_A.jpg``: photo A as coded.
    """
    queries = labelled_photos(folder, "AB")
    turns = (degrees // 90) % 4
    coded = [np.ascontiguousarray(np.rot90(picture(queries[c], size), k=-turns)) for c in "AB"]
    out = folder / f"rotated{degrees}{suffix}"
    write(out, [(0.0, 4.0, coded[0]), (4.0, 8.0, coded[1])], rotation=degrees)
    sideways = folder / "sideways_A.jpg"
    Image.fromarray(coded[0]).save(sideways, quality=95)
    return Built(out, {**queries, "sideways_A": sideways})


# ---------------------------------------------------------------- 6. degenerate sizes
def degenerate(folder: Path, size: tuple[int, int] = (1920, 1), seconds: float = 4.0) -> Built:
    """A video of a degenerate ``size`` (width, height): A then B, ``seconds`` / 2 each (x264, 4:4:4)."""
    shots, queries = scenes(folder, seconds / 2, "AB", size=size)
    out = folder / f"size{size[0]}x{size[1]}.mkv"
    write(out, shots, pix_fmt="yuv444p")
    return Built(out, queries)


def absurd(folder: Path, size: tuple[int, int] = (40000, 2)) -> Built:
    """A lossless PNG video in QuickTime whose pictures are absurdly large (one frame a second)."""
    shots, _ = scenes(folder, 1.0, "A", size=size)
    out = folder / f"absurd{size[0]}x{size[1]}.mov"
    write(out, shots, fps=1.0, codec="png", pix_fmt="rgb24")
    return Built(out, {})


# ---------------------------------------------------------------- 7. held frames
def held(folder: Path, suffix: str = ".mp4", hold: float = 10.0) -> Built:
    """A screen recording: one frame per scene, each held ``hold`` s (A 0-10 s, B 10-20, C 20-30)."""
    shots, queries = scenes(folder, hold)
    out = folder / f"held{suffix}"
    write(out, shots, fps=0)
    return Built(out, queries)


# ---------------------------------------------------------------- 8. empty
def empty(folder: Path, suffix: str = ".avi") -> Built:
    """A video stream header (H.264, 128x96) and not a single frame."""
    out = folder / f"empty{suffix}"
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264" if suffix != ".avi" else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        container.start_encoding()
    return Built(out, {})


def plain(folder: Path, suffix: str = ".mp4") -> Built:
    """The reference: an ordinary 10 fps file, A 0-4 s, B 4-8, C 8-12."""
    shots, queries = scenes(folder, 4.0)
    out = folder / f"plain{suffix}"
    write(out, shots)
    return Built(out, queries)
