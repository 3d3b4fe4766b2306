"""A small fault-injecting RTSP server for tests: H.264 over RTSP/TCP (interleaved), in-process.

GStreamer's server (:mod:`tests.streams.servers.rtsp_server`) behaves like a
well-kept camera; this one behaves like the cameras people report against
NVR projects. It serves ``rtsp://127.0.0.1:PORT/cam`` with frames encoded
once by PyAV's libx264 (a few solid-colour scenes) and looped, each client on
its own thread, and injects what :class:`Faults` asks for:

* ``stray_every``/``stray_offset``: one frame in N stamped far from its
  neighbours (the RTP timestamp only; the picture is fine);
* ``jump_after``/``jump``: the sender's clock jumps once and stays there;
* ``fps``/``gop``: slow cameras (one frame every few seconds, keyframes far
  apart) — scaled down in tests, the behaviour only depends on the ratios;
* ``sprop=False`` and ``start_frame``: no SPS/PPS in the SDP and a stream
  that starts between keyframes (the decoder must wait for the next IDR,
  which carries them in-band);
* ``skew``, ``rtcp_delay``, ``rtcp_interval``: RTCP sender reports whose NTP
  clock is off from ours, that start late, or (``rtcp_interval=0``) never come.

Only what FFmpeg's RTSP client needs is implemented: OPTIONS, DESCRIBE,
SETUP (TCP interleaved only), PLAY, GET_PARAMETER, TEARDOWN.
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from tests.streams.servers import free_port

NTP_EPOCH = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
MTU = 1400


@dataclass(frozen=True)
class Faults:
    """What the server does wrong (defaults: nothing, 10 fps, a keyframe every second)."""

    fps: float = 10.0
    gop: int = 10
    frames: int = 40
    """Frames encoded (a multiple of ``gop``); the stream loops over them."""
    size: tuple[int, int] = (160, 96)
    sprop: bool = True
    start_frame: int = 0
    stray_every: int = 0
    stray_offset: float = 3600.0
    jump_after: int | None = None
    jump: float = 0.0
    skew: float = 0.0
    rtcp_interval: float = 0.5
    rtcp_delay: float = 0.0


SCENES = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40)]


def encode(faults: Faults) -> tuple[list[list[bytes]], bytes, bytes]:
    """The looped frames as NAL units (start codes stripped), and the SPS and PPS."""
    w, h = faults.size
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.time_base = Fraction(1, 90_000)
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "profile": "baseline",
        "x264-params": f"keyint={faults.gop}:min-keyint={faults.gop}:scenecut=0:repeat-headers=1",
    }
    out: list[list[bytes]] = []
    per_scene = max(1, faults.frames // len(SCENES))
    packets = []
    for i in range(faults.frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = SCENES[(i // per_scene) % len(SCENES)]
        img[(i * 3) % h :, : w // 4] = 255 - img[0, 0]  # some motion, so P-frames are not empty
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 9000
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    sps = pps = b""
    for packet in packets:
        parts = bytes(packet).split(b"\x00\x00\x01")
        nals = [n.rstrip(b"\x00") for n in parts]  # 4-byte start codes leave a zero behind
        nals = [n for n in nals if n]
        for nal in nals:
            kind = nal[0] & 0x1F
            if kind == 7 and not sps:
                sps = nal
            elif kind == 8 and not pps:
                pps = nal
        out.append(nals)
    return out, sps, pps


def rtp_packets(nals: list[bytes], seq: int, ts: int, ssrc: int) -> list[bytes]:
    """One access unit as RTP packets (single NAL units, or FU-A fragments); marker on the last."""
    payloads: list[bytes] = []
    for nal in nals:
        if len(nal) <= MTU:
            payloads.append(nal)
            continue
        head, body = nal[0], nal[1:]
        chunks = [body[i : i + MTU] for i in range(0, len(body), MTU)]
        for k, chunk in enumerate(chunks):
            fu_header = (head & 0x1F) | (0x80 if k == 0 else 0) | (0x40 if k == len(chunks) - 1 else 0)
            payloads.append(bytes([(head & 0xE0) | 28, fu_header]) + chunk)
    out = []
    for k, payload in enumerate(payloads):
        marker = 0x80 if k == len(payloads) - 1 else 0
        header = struct.pack("!BBHII", 0x80, marker | 96, (seq + k) & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        out.append(header + payload)
    return out


def sender_report(ssrc: int, wall: float, rtp_ts: int, packets: int, octets: int) -> bytes:
    """An RTCP SR: the sender's NTP time ``wall`` (Unix seconds) is RTP time ``rtp_ts``."""
    ntp = wall + NTP_EPOCH
    sec = int(ntp)
    frac = int((ntp - sec) * (1 << 32)) & 0xFFFFFFFF
    return struct.pack(
        "!BBHIIIIII", 0x80, 200, 6, ssrc, sec, frac, rtp_ts & 0xFFFFFFFF, packets, octets & 0xFFFFFFFF
    )


class FaultRtspServer:
    """``with FaultRtspServer(Faults(...)) as srv: srv.url`` — serves until the block ends."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.units, self.sps, self.pps = encode(self.faults)
        self.port = free_port()
        self.sessions = 0
        """PLAY requests served (one per client session)."""
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def __enter__(self) -> FaultRtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(0.2)
        self._listener = listener
        self._spawn(self._accept)

    def stop(self) -> None:
        """Close every connection and join every thread."""
        self._stop.set()
        for sock in list(self._clients):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._clients.append(conn)
            self._spawn(self._serve, conn)

    # ---- one client ------------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        playing = threading.Event()
        buf = b""
        conn.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                buf += data
                while True:
                    if buf[:1] == b"$":  # interleaved RTCP from the client (receiver reports)
                        if len(buf) < 4:
                            break
                        size = struct.unpack("!H", buf[2:4])[0]
                        if len(buf) < 4 + size:
                            break
                        buf = buf[4 + size :]
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buf = buf[:end].decode(errors="replace"), buf[end + 4 :]
                    if self._answer(conn, lock, head) and not playing.is_set():
                        playing.set()
                        self.sessions += 1
                        self._spawn(self._send, conn, lock)
        except OSError:
            pass
        finally:
            self._stop_client(conn)

    def _stop_client(self, conn: socket.socket) -> None:
        try:
            conn.close()
        except OSError:
            pass

    def _answer(self, conn: socket.socket, lock: threading.Lock, head: str) -> bool:
        """Reply to one request; True for PLAY."""
        lines = head.split("\r\n")
        method = lines[0].split(" ")[0]
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        extra = ""
        body = ""
        status = "200 OK"
        if method == "OPTIONS":
            extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"
        elif method == "DESCRIBE":
            body = self._sdp()
            extra = f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
        elif method == "SETUP":
            if "interleaved" not in fields.get("transport", ""):
                status = "461 Unsupported Transport"
            else:
                extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4711;timeout=60\r\n"
        elif method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
            extra = "Session: 4711\r\n"
            if method == "PLAY":
                extra += "Range: npt=0.000-\r\n"
        else:
            status = "501 Not Implemented"
        reply = f"RTSP/1.0 {status}\r\nCSeq: {fields.get('cseq', '0')}\r\n{extra}"
        reply += f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
        with lock:
            conn.sendall(reply.encode())
        return method == "PLAY" and status.startswith("200")

    def _sdp(self) -> str:
        fmtp = "packetization-mode=1;profile-level-id=42c01e"
        if self.faults.sprop:
            sets = ",".join(base64.b64encode(n).decode() for n in (self.sps, self.pps))
            fmtp += f";sprop-parameter-sets={sets}"
        return (
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=fault\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            f"a=fmtp:96 {fmtp}\r\na=control:trackID=0\r\n"
        )

    def _send(self, conn: socket.socket, lock: threading.Lock) -> None:
        """Frames at ``fps`` in real time, with the faults; sender reports on channel 1."""
        f = self.faults
        ssrc, base, seq = 0x1234ABCD, 1_000_000, 0
        t0 = time.monotonic()
        next_sr = t0 + f.rtcp_delay
        sent = octets = 0
        k = 0
        try:
            while not self._stop.is_set():
                due = t0 + k / f.fps
                while not self._stop.is_set():
                    now = time.monotonic()
                    if f.rtcp_interval > 0 and now >= next_sr:
                        rtp_now = base + int((now - t0) * 90_000)
                        sr = sender_report(ssrc, time.time() + f.skew, rtp_now, sent, octets)
                        with lock:
                            conn.sendall(b"$\x01" + struct.pack("!H", len(sr)) + sr)
                        next_sr = now + f.rtcp_interval
                    if now >= due:
                        break
                    wake = min(due, next_sr) if f.rtcp_interval > 0 else due
                    time.sleep(max(0.0, min(0.05, wake - now)))
                offset = k / f.fps
                if f.stray_every and k % f.stray_every == f.stray_every - 1:
                    offset += f.stray_offset
                if f.jump_after is not None and k >= f.jump_after:
                    offset += f.jump
                unit = self.units[(f.start_frame + k) % len(self.units)]
                for packet in rtp_packets(unit, seq, base + round(offset * 90_000), ssrc):
                    with lock:
                        conn.sendall(b"$\x00" + struct.pack("!H", len(packet)) + packet)
                    seq += 1
                    sent += 1
                    octets += len(packet) - 12
                k += 1
        except OSError:
            pass  # the client went away
