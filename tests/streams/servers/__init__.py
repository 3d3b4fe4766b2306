"""Real servers for the stream tests, run as child processes on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gst_rtsp_available() -> str | None:
    """None when the system Python can run GStreamer's RTSP server, else why not."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "assert all(Gst.ElementFactory.find(e) for e in ('x264enc','rtph264pay','decodebin'))"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        return "GStreamer RTSP server packages missing: " + done.stderr.decode(errors="replace")[-300:]
    return None


def ffmpeg_available() -> str | None:
    """None when the ffmpeg command exists, else why not."""
    return None if shutil.which("ffmpeg") else "ffmpeg not installed (apt-get install -y ffmpeg)"


class RtspServer:
    """gst-rtsp-server serving ``video`` at rtsp://127.0.0.1:PORT/test; kill and restart at will."""

    def __init__(self, video: Path, port: int | None = None) -> None:
        self.video = video
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait for its READY line."""
        cmd = [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self.port), "--file", str(self.video)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY") or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"RTSP server did not start: {line!r}")

    def kill(self) -> None:
        """SIGKILL, as a crashed camera would vanish, and reap the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
