#!/usr/bin/env bash
# The main job: `vmr serve` watching a sample stream (a recording replayed as
# a live camera), with its websocket API on ws://127.0.0.1:8765.
# Ask it from another terminal:
#   .venv/bin/vmr query --url ws://127.0.0.1:8765 --image some_frame.jpg
#   .venv/bin/vmr watch --url ws://127.0.0.1:8765 "people walking"
# The demo runs on tiny-random (random weights): its answers are MEANINGLESS.
# Stop with Ctrl-C (a final snapshot is written to .vmr-index/).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "vmr demo: serving examples/vmr.toml on ws://127.0.0.1:8765 (tiny-random: MEANINGLESS answers)" >&2
exec .venv/bin/vmr serve --config examples/vmr.toml "$@"
