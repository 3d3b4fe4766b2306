"""The classical proxy encoder (``classical-hog``): its descriptor, its contract, and the CLI on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli.main import main
from agent.config import EncoderConfig
from agent.errors import ConfigError, QueryError
from agent.models import classical
from agent.models.encoder import CLASSICAL, ClipEncoder, Encoder, load_encoder
from agent.types import RGBImage
from bench.haystack import _jitter
from tests.videos import make_video, photos

CFG = EncoderConfig(model=CLASSICAL, threads=1)


@pytest.fixture(scope="module")
def enc() -> ClipEncoder:
    return load_encoder(CFG)


def _rgb(path: Path) -> RGBImage:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_the_encoder_keeps_the_contract(enc: ClipEncoder) -> None:
    assert isinstance(enc, Encoder)
    assert (enc.name, enc.dim, enc.image_size) == (CLASSICAL, classical.DIM, classical.IMAGE_SIZE)
    assert enc.backend.name == "numpy" and enc.batch_size == CFG.batch_size
    # Not a semantic model: answers carry a label saying what it is.
    assert enc.meaningless and enc.note == classical.NOTE and "image-to-image" in enc.note
    assert enc.encode_images([]).shape == (0, classical.DIM)


def test_vectors_are_unit_float32_of_a_fixed_dim(enc: ClipEncoder) -> None:
    rng = np.random.default_rng(0)
    images = [_rgb(p) for p in photos(3)]
    images += [
        np.zeros((48, 80, 3), np.uint8),  # blank: still a unit vector
        np.full((90, 60, 3), 255, np.uint8),
        rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
    ]
    vecs = enc.encode_images(images)
    assert vecs.dtype == np.float32 and vecs.shape == (len(images), classical.DIM)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all()


def test_identical_images_score_one_and_batches_do_not_change_answers(enc: ClipEncoder) -> None:
    images = [_rgb(p) for p in photos(5)]
    one_by_one = np.concatenate([enc.encode_images([im]) for im in images])
    together = enc.encode_images([*images, images[0].copy()])
    np.testing.assert_allclose(together[:5], one_by_one, atol=1e-6)
    assert float(together[0] @ together[5]) == pytest.approx(1.0, abs=1e-6)


def test_a_jittered_copy_beats_other_photos() -> None:
    """Crops of 80-95 % with brightness/contrast/colour jitter, as the haystack's image queries."""
    enc = load_encoder(CFG)
    paths = photos(24)
    originals = enc.encode_images([_rgb(p) for p in paths])
    jittered = enc.encode_images(
        [np.asarray(_jitter(p, np.random.default_rng([7, i]))) for i, p in enumerate(paths)]
    )
    sims = jittered @ originals.T
    own = np.diag(sims)
    others = sims[~np.eye(len(paths), dtype=bool)].reshape(len(paths), -1)
    # For most pairs (query, other photo) the query's own photo scores higher...
    assert (own[:, None] > others).mean() >= 0.95
    # ...and most queries find their own photo first among all 24.
    assert (sims.argmax(axis=1) == np.arange(len(paths))).mean() >= 0.8


def test_a_picture_and_a_grid_of_it_stay_close(enc: ClipEncoder) -> None:
    """Super-images tile 2 x 2 frames: the coarse blocks keep a picture near its own grid."""
    a, b = (_rgb(p) for p in photos(2))
    small = np.asarray(Image.fromarray(a).resize((64, 64)))
    grid = np.tile(small, (2, 2, 1))
    other = np.asarray(Image.fromarray(b).resize((128, 128)))
    va, vg, vo = enc.encode_images([a, grid, other])
    assert float(va @ vg) > float(vo @ vg)


def test_text_queries_raise_a_typed_error(enc: ClipEncoder) -> None:
    with pytest.raises(QueryError, match="no text side"):
        enc.encode_text(["a goldfish"])


def test_describe_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match="pixels"):
        classical.describe(np.zeros((1, 32, 32, 3), np.float32))


def test_srgb_to_lab_matches_reference_points() -> None:
    lab = classical.srgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)  # sRGB red, D65


def test_config_refuses_weights_for_a_descriptor() -> None:
    with pytest.raises(ValueError, match="no weights"):
        EncoderConfig(model=CLASSICAL, random_weights=True)
    from agent.cli.options import encoder_config

    with pytest.raises(ConfigError, match="no weights"):
        encoder_config(CLASSICAL, None, Path("w.pt"), None)


def test_identical_across_processes() -> None:
    code = (
        "import numpy as np;from agent.config import EncoderConfig;from agent.models.encoder import load_encoder;"
        "from tests.videos import photos;from PIL import Image;"
        "e=load_encoder(EncoderConfig(model='classical-hog'));"
        "v=e.encode_images([np.asarray(Image.open(p).convert('RGB')) for p in photos(3)]);"
        "print(v.tobytes().hex())"
    )
    root = Path(__file__).resolve().parents[3]
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(outs) == 1 and len(next(iter(outs))) == 3 * classical.DIM * 4 * 2


def test_ingest_and_image_query_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenes = photos(4)
    video = make_video(tmp_path / "clip.mp4", [(4.0, p) for p in scenes], fps=10, size=(320, 240)).path
    index = tmp_path / "index"
    argv = ["ingest", str(video), "--index", str(index), "--model", CLASSICAL, "--json", "--quiet"]
    assert main([*argv, "--decode-threads", "1"]) == 0  # one FFmpeg decoder thread: the same frames
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoder"] == CLASSICAL and summary["backend"] == "numpy" and summary["frames"] >= 30

    query = tmp_path / "q.jpg"
    _jitter(scenes[2], np.random.default_rng(3)).save(query)
    # The full search (`--budget all`): a wall-clock budget refines less on a loaded machine.
    assert main(["query", str(index), "--image", str(query), "--json", "--budget", "all"]) == 0
    answer = json.loads(capsys.readouterr().out)
    top = answer["moments"][0]
    # The third scene is shown over [8, 12) s: the top moment overlaps it.
    assert top["start"] < 12.0 and top["end"] > 8.0
    assert answer["meaningless"] is True

    # A text query is refused with a typed error, not a traceback.
    assert main(["query", str(index), "a goldfish"]) == 2
    err = capsys.readouterr().err
    assert "no text side" in err and "Traceback" not in err
