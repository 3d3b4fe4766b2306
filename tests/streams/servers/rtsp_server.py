"""A real RTSP server for tests: GStreamer's gst-rtsp-server (Debian packages).

Run with the *system* Python (``/usr/bin/python3``), which has the GObject
introspection bindings; the project's virtualenv does not. Serves a video
file at ``rtsp://127.0.0.1:PORT/test``, re-encoded to H.264 so any input
codec works (vtest.avi is MS-MPEG4), played at real-time pace; every client
gets its own pipeline from the start of the file, looping is not needed for
tests shorter than the file. Prints ``READY <port>`` once listening.

Needs: gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav.

    /usr/bin/python3 rtsp_server.py --port 8554 --file /path/video.avi
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(path: str, width: int) -> str:
    """GStreamer pipeline: decode anything, scale down (cheap to encode), H.264 over RTP."""
    return (
        f'( filesrc location="{path}" ! decodebin ! videoconvert ! videoscale '
        f"! video/x-raw,width={width},pixel-aspect-ratio=1/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--width", type=int, default=384)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.file, args.width))
    factory.set_shared(False)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
