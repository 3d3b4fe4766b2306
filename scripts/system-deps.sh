#!/usr/bin/env bash
# Debian packages the test-suite's real peers need: ffmpeg (segmenter),
# GStreamer's RTSP server (run with the system python3 + PyGObject), Tesseract
# with its English data (on-screen text channel), espeak-ng (speech in tests),
# fonts-dejavu-core (the text benchmark's signs),
# and chromium for the web page's end-to-end tests (driven by Playwright with
# executable_path: no browser download).
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
    >/dev/null 2>&1 || need+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-libav)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
[ -n "$(ls /usr/share/tesseract-ocr/*/tessdata/eng.traineddata 2>/dev/null)" ] || need+=(tesseract-ocr-eng)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
# the text benchmark's signs (bench/text_channels.py: DejaVu Sans Bold, Serif, Sans Mono)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
