"""Query vectors per grid: image queries as still shots of their photo (the engine's rule) or alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.config import EncoderConfig
from agent.core.superimage import still_shot
from agent.errors import ConfigError
from agent.models.encoder import load_encoder
from bench.dense_inputs import queries_by_grid


def _gt(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for n in range(2):
        rel = f"q{n}.jpg"
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(tmp_path / rel)
        rows.append({"qid": n, "query": rel, "image": rel, "kind": "image", "relevant_windows": [[0, 1]]})
    path = tmp_path / "gt_image.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_image_queries_meet_each_grid_as_a_still_shot(tmp_path: Path) -> None:
    enc = load_encoder(EncoderConfig(model="classical-hog"))
    gt = _gt(tmp_path)
    sets = queries_by_grid({"image": gt}, enc, [1, 2])
    rows, q1 = sets[1]["image"]
    _, q2 = sets[2]["image"]
    assert [r["qid"] for r in rows] == [0, 1] and q1.shape == q2.shape == (2, enc.dim)
    with Image.open(tmp_path / "q0.jpg") as im:
        photo = np.asarray(im.convert("RGB"))
    np.testing.assert_allclose(q2[0], enc.encode_images([still_shot(photo, 2, enc.image_size)])[0], atol=1e-6)
    np.testing.assert_allclose(q1[0], enc.encode_images([photo])[0], atol=1e-6)
    # The still shot is another picture than the photo: another vector.
    assert float(np.dot(q1[0], q2[0])) < 0.999
    # ``photo`` is the old rule: the photo alone at every grid, encoded once.
    alone = queries_by_grid({"image": gt}, enc, [1, 2], "photo")
    assert alone[1]["image"] is alone[2]["image"]
    np.testing.assert_array_equal(alone[2]["image"][1], q1)


def test_an_unknown_image_query_mode_is_a_config_error(tmp_path: Path) -> None:
    enc = load_encoder(EncoderConfig(model="classical-hog"))
    with pytest.raises(ConfigError, match="image_query"):
        queries_by_grid({"image": _gt(tmp_path)}, enc, [1], "tiles")
