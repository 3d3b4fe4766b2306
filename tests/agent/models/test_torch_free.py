"""An OpenVINO cache hit serves encoder, ``vmr ingest`` and ``vmr query`` without torch or open_clip.

Primed here (this process has torch), then checked in a fresh interpreter,
which is what a serving process is: every module it imported is in
``sys.modules`` at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent.models.encoder as encoder
from agent.models.encoder import load_encoder
from tests.agent.models.samples import TINY
from tests.videos import make_video

_HEAVY = ("torch", "open_clip", "torchvision", "timm")

_CHILD = """
import json, sys
import numpy as np
from agent.cli.main import main
from agent.config import EncoderConfig
from agent.models.encoder import load_encoder

video, index = sys.argv[1], sys.argv[2]
enc = load_encoder(EncoderConfig(model="tiny-random", allow_random=True, threads=1, backend="openvino"))
frames = [np.full((120, 160, 3), 90, np.uint8), np.zeros((224, 224, 3), np.uint8)]
image_vecs, text_vecs = enc.encode_images(frames), enc.encode_text(["a dog", "a red car"])
common = ["--model", "tiny-random", "--backend", "openvino", "--threads", "1", "--json"]
ingest = main(["ingest", video, "--index", index, *common, "--quiet"])
query = main(["query", index, "a red scene", "--json"])
print(json.dumps({
    "cache_hit": enc.backend.cache_hit,
    "shapes": [list(image_vecs.shape), list(text_vecs.shape)],
    "codes": [ingest, query],
    "heavy": [m for m in sys.argv[3:] if m in sys.modules],
}))
"""


def test_a_cache_hit_process_never_imports_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VMR_CACHE", str(cache))
    monkeypatch.setattr(encoder, "_CACHE", {})
    load_encoder(TINY.model_copy(update={"backend": "openvino"}))  # converts once: the cache is primed
    assert any((cache / "openvino").iterdir())
    video = make_video(
        tmp_path / "clip.mp4", [(2.0, (200, 40, 40)), (2.0, (40, 40, 200))], fps=10, gop=5
    ).path

    env = {**os.environ, "VMR_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(video), str(tmp_path / "index"), *_HEAVY],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # The CLI prints its own JSON first; the child's summary is the last line.
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["cache_hit"] is True and summary["codes"] == [0, 0]
    assert summary["shapes"] == [[2, 256], [2, 256]]
    assert summary["heavy"] == []
