"""Random weights: explicit only, seeded identically in every process, labelled meaningless."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from agent.cli.main import build_parser
from agent.cli.options import encoder_config, settings_from_args
from agent.config import EncoderConfig
from agent.errors import ConfigError
from agent.models.weights import BuiltModel, build_model, weights_digest
from tests.agent.models.samples import TINY


def test_random_weights_are_never_implicit() -> None:
    assert EncoderConfig().random_weights is False
    args = build_parser().parse_args(["ingest", "v.mp4", "--index", "i"])
    assert settings_from_args(args).prescreen.random_weights is False
    args = build_parser().parse_args(["ingest", "v.mp4", "--index", "i", "--random-weights"])
    pre = settings_from_args(args).prescreen
    assert (pre.model, pre.random_weights, pre.pretrained) == ("MobileCLIP2-S0", True, None)


def test_flags_reach_every_command() -> None:
    parser = build_parser()
    for argv in (
        ["ingest", "v.mp4", "--index", "i"],
        ["serve"],
        ["bench", "haystack", "run"],
        ["bench", "abstention"],
        ["bench", "charades"],
        ["eval", "charades", "--annotations", "a.jsonl"],
    ):
        a = parser.parse_args([*argv, "--random-weights", "--backend", "openvino"])
        assert (a.random_weights, a.backend) == (True, "openvino"), argv


def test_random_weights_exclude_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exclude"):
        EncoderConfig(random_weights=True, checkpoint="w.pt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exclude"):
        encoder_config("ViT-B-32", None, tmp_path, None, random_weights=True)


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        build_model(EncoderConfig(model="no-such-net", random_weights=True))


def test_backend_is_validated() -> None:
    with pytest.raises(ConfigError, match="backend"):
        encoder_config("MobileCLIP2-S0", None, None, None, backend="tensorrt")


def test_random_build_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_default_architecture_with_random_weights(default_random: BuiltModel) -> None:
    # Built like the real MobileCLIP2-S0: 256 px input, MobileOne branches folded.
    assert default_random.name == "MobileCLIP2-S0:random-weights" and default_random.meaningless
    assert default_random.image_size == 256 and default_random.context_length == 77
    folded = [m for m in default_random.model.modules() if getattr(m, "reparam_conv", None) is not None]
    assert folded  # timm sets reparam_conv only when it folds a block's branches
    # Another process builds bit-identical weights, so its index is queryable here.
    code = (
        "from agent.config import EncoderConfig;from agent.models.weights import build_model, weights_digest;"
        "print(weights_digest(build_model(EncoderConfig(model='MobileCLIP2-S0', random_weights=True)).model))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == weights_digest(default_random.model)


def test_serve_flags_override_the_encoder_settings() -> None:
    from agent.cli.serve import serve_config

    parser = build_parser()
    pre = serve_config(parser.parse_args(["serve", "--random-weights"])).settings.prescreen
    assert (pre.model, pre.random_weights, pre.pretrained, pre.backend) == (
        "MobileCLIP2-S0",
        True,
        None,
        "auto",
    )
    argv = ["serve", "--model", "tiny-random", "--threads", "1", "--backend", "torch"]
    pre = serve_config(parser.parse_args(argv)).settings.prescreen
    assert (pre.model, pre.allow_random, pre.random_weights, pre.backend, pre.threads) == (
        "tiny-random",
        True,
        False,
        "torch",
        1,
    )
    assert serve_config(parser.parse_args(["serve"])).settings.prescreen.random_weights is False


def test_serve_config_file_carries_weights_and_backend(tmp_path: Path) -> None:
    from agent.cli.serve import serve_config

    conf = tmp_path / "vmr.toml"
    conf.write_text(
        '[settings.prescreen]\nmodel = "ViT-B-32"\nrandom_weights = true\nbackend = "openvino"\nbatch_size = 4\n'
    )
    parser = build_parser()
    pre = serve_config(parser.parse_args(["serve", "--config", str(conf)])).settings.prescreen
    assert (pre.model, pre.random_weights, pre.backend, pre.batch_size) == ("ViT-B-32", True, "openvino", 4)
    # A flag overrides one field and keeps the file's others.
    pre = serve_config(
        parser.parse_args(["serve", "--config", str(conf), "--backend", "torch"])
    ).settings.prescreen
    assert (pre.model, pre.random_weights, pre.backend, pre.batch_size) == ("ViT-B-32", True, "torch", 4)
    conf.write_text('[settings.prescreen]\nbackend = "tensorrt"\n')
    with pytest.raises(ConfigError, match="backend"):
        serve_config(parser.parse_args(["serve", "--config", str(conf)]))
