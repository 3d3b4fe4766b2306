"""Building the torch CLIP model an :class:`~agent.config.EncoderConfig` names.

Three kinds of weights:

- **pretrained**: an open_clip architecture with weights from a pretrained tag
  (downloaded from the Hugging Face hub where a network exists, else taken
  from its cache; an offline machine without them gets the typed error in
  seconds: :mod:`agent.models.hub`) or a local checkpoint;
- **random** (``random_weights=True``): the same architecture built from a fixed
  seed, for speed and capacity runs: it costs what the real model costs, and
  every process builds the very same weights, so an index written by one
  process can be queried by another;
- ``tiny-random``: a 4-layer, 256-wide ViT from a fixed seed, for tests and the
  offline demo.

Random weights make every similarity **meaningless**; :class:`BuiltModel`
carries that flag so every answer can say so. MobileCLIP models are
reparameterised (MobileOne branches folded) after building, real or random,
which is how they reach their published CPU speed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import EncoderConfig
from agent.errors import ConfigError, WeightsUnavailableError
from agent.models.hub import WeightsPlan, cached_file, plan

if TYPE_CHECKING:  # torch is imported where a model is built, never on an OpenVINO cache hit
    import torch

TINY_RANDOM = "tiny-random"
# One seed for every random build: identical weights in every process.
_SEED = 20240607
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_TINY_TOKENIZER = "ViT-B-32"


@dataclass(frozen=True)
class ModelFacts:
    """What it takes to feed a CLIP model, without the model (JSON-serialisable).

    ``arch`` names the architecture (the open_clip name, or ``tiny-random``);
    ``tokenizer`` the open_clip tokenizer name (:func:`load_tokenizer`);
    ``image_size`` is the square input side in pixels; ``context_length`` the
    token count per text row; ``mean``/``std`` the per-channel normalisation of
    pixels in [0, 1]. An OpenVINO cache entry keeps these, so a cache hit needs
    no torch model.
    """

    arch: str
    name: str
    tokenizer: str
    image_size: int
    context_length: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meaningless: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFacts:
        """The facts :meth:`to_dict` wrote (KeyError/TypeError/ValueError when malformed)."""
        return cls(
            arch=str(data["arch"]),
            name=str(data["name"]),
            tokenizer=str(data["tokenizer"]),
            image_size=int(data["image_size"]),
            context_length=int(data["context_length"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            meaningless=bool(data["meaningless"]),
        )


@dataclass(frozen=True)
class BuiltModel:
    """A torch CLIP model in eval mode, its tokenizer, and the :class:`ModelFacts` to feed it."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    facts: ModelFacts

    @property
    def arch(self) -> str:
        return self.facts.arch

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def image_size(self) -> int:
        return self.facts.image_size

    @property
    def context_length(self) -> int:
        return self.facts.context_length

    @property
    def mean(self) -> tuple[float, ...]:
        return self.facts.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.facts.std

    @property
    def meaningless(self) -> bool:
        return self.facts.meaningless


Tokenizer = Callable[[list[str]], np.ndarray]
"""A text tokenizer: list of str -> (n, context_length) int64 token ids."""


def load_tokenizer(name: str) -> Tokenizer:
    """The tokenizer of open_clip model ``name`` (:attr:`ModelFacts.tokenizer`): list of str -> (n, ctx) int64.

    Models open_clip tokenizes with its plain ``SimpleTokenizer`` get the same ids
    from :class:`~agent.models.clip_tokenizer.ClipTokenizer` (no torch, no
    open_clip import); any other keeps open_clip's own (which imports both).
    """
    from agent.models import clip_tokenizer

    fast = clip_tokenizer.for_model(name)
    if fast is not None:
        return fast
    return _OpenClipTokenizer(name)


class _OpenClipTokenizer:
    """open_clip's own tokenizer for ``name``, answering numpy (imports torch and open_clip)."""

    def __init__(self, name: str) -> None:
        import open_clip

        self._tokenizer = open_clip.get_tokenizer(name)
        self.context_length = int(getattr(self._tokenizer, "context_length", 77))

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self._tokenizer(texts).numpy()  # type: ignore[no-any-return]


@contextmanager
def _seeded() -> Iterator[None]:
    # fork_rng keeps the caller's global RNG untouched while the fixed seed
    # makes the weights identical in every process.
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        yield


def _tiny_random() -> BuiltModel:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    with _seeded():
        model = open_clip.CLIP(
            embed_dim=256,
            vision_cfg=CLIPVisionCfg(layers=4, width=256, head_width=64, patch_size=32, image_size=224),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=256, heads=4, layers=4),
        )
    facts = ModelFacts(
        arch=TINY_RANDOM,
        name=TINY_RANDOM,
        tokenizer=_TINY_TOKENIZER,
        image_size=224,
        context_length=77,
        mean=_OPENAI_MEAN,
        std=_OPENAI_STD,
        meaningless=True,
    )
    return BuiltModel(model=model.eval(), tokenizer=load_tokenizer(facts.tokenizer), facts=facts)


def _weights_message(cfg: EncoderConfig, exc: BaseException) -> str:
    return (
        f"could not load weights for {cfg.model!r} "
        f"({'checkpoint ' + str(cfg.checkpoint) if cfg.checkpoint else 'pretrained tag ' + repr(cfg.pretrained)}): "
        f"{exc}. Supply real weights: either run once where the Hugging Face hub is reachable "
        f"(open_clip caches them), or download the checkpoint elsewhere and pass "
        f"--checkpoint PATH (EncoderConfig.checkpoint). For speed runs only, --random-weights "
        f"builds this architecture with random weights; for an offline demo, --model tiny-random. "
        f"Answers from either are meaningless."
    )


def _open_clip_model(cfg: EncoderConfig) -> torch.nn.Module:
    import open_clip

    if cfg.model not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {cfg.model!r}; see open_clip.list_models()")
    if cfg.random_weights:
        with _seeded():
            return open_clip.create_model(cfg.model, pretrained=None)
    source: str | None = str(cfg.checkpoint) if cfg.checkpoint else cfg.pretrained
    if source is None:
        raise WeightsUnavailableError(_weights_message(cfg, ValueError("no pretrained tag or checkpoint")))
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():
        raise WeightsUnavailableError(_weights_message(cfg, FileNotFoundError(str(cfg.checkpoint))))
    # Only a tag goes to the hub: find out first whether it can (a checkpoint is a local file).
    how = plan(cfg.model, source) if cfg.checkpoint is None else WeightsPlan(source)
    if how.unavailable is not None:
        raise WeightsUnavailableError(_weights_message(cfg, ConnectionError(how.unavailable)))
    try:
        return open_clip.create_model(
            cfg.model, pretrained=how.pretrained, require_pretrained=True, force_preprocess_cfg=how.preprocess
        )
    except Exception as exc:
        raise WeightsUnavailableError(_weights_message(cfg, exc)) from exc


def _pair(value: object, default: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, tuple | list) else tuple(default)


def build_model(cfg: EncoderConfig) -> BuiltModel:
    """The torch model ``cfg`` names, in eval mode, on the CPU.

    Raises :class:`ConfigError` for an unknown architecture and
    :class:`WeightsUnavailableError` (with instructions) when real weights
    cannot be had; never falls back to random weights silently.
    """
    if cfg.model == TINY_RANDOM:
        return _tiny_random()
    import open_clip

    model = _open_clip_model(cfg)
    if "MobileCLIP" in cfg.model:
        from timm.utils import reparameterize_model

        model = reparameterize_model(model)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    tokenizer = load_tokenizer(cfg.model)
    weights = "random-weights" if cfg.random_weights else str(cfg.checkpoint or cfg.pretrained)
    facts = ModelFacts(
        arch=cfg.model,
        name=f"{cfg.model}:{weights}",
        tokenizer=cfg.model,
        image_size=int(size[0] if isinstance(size, tuple | list) else size),
        context_length=int(getattr(tokenizer, "context_length", 77)),
        mean=_pair(pp.get("mean"), _OPENAI_MEAN),
        std=_pair(pp.get("std"), _OPENAI_STD),
        meaningless=cfg.random_weights,
    )
    return BuiltModel(model=model.eval(), tokenizer=tokenizer, facts=facts)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of the state dict: names, dtypes, shapes and bytes, in order.

    Identifies the weights a converted model was made from (~0.5 s per 300 MB).
    """
    import torch

    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _libraries() -> str:
    """Versions of what turns weights into a model (architecture code, reparameterisation, tracing)."""
    names = ("open_clip_torch", "timm", "torch")
    return ",".join(f"{n}={_version(n)}" for n in names)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def weights_id(cfg: EncoderConfig) -> str | None:
    """What identifies the weights ``cfg`` names, without building the model; None when unknown here.

    - seeded random weights (``random_weights``, ``tiny-random``): the seed;
    - a checkpoint file: its resolved path, size, mtime and SHA-256 (hashing
      reads the file: ~0.3 s per 300 MB, far less than building the model);
    - a pretrained tag: the file open_clip would load from the local Hugging
      Face cache (:func:`agent.models.hub.cached_file`), by its blob name (the
      hub's content hash), size and mtime; None when the file is not cached
      yet (the caller builds and hashes instead).
      A newer upstream revision counts once it is in the local cache.

    The versions of open_clip, timm and torch are part of it (they turn the
    weights into the traced model). Keys the OpenVINO cache
    (:mod:`agent.models.openvino_backend`), so a cache hit needs no torch model.
    """
    libs = _libraries()
    if cfg.model == TINY_RANDOM or cfg.random_weights:
        return f"seed={_SEED}|{libs}"
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint).resolve()
        try:
            st = path.stat()
            digest = _file_sha256(path)
        except OSError:
            return None  # building reports the missing file with instructions
        return f"checkpoint={path}|size={st.st_size}|mtime_ns={st.st_mtime_ns}|sha256={digest}|{libs}"
    if cfg.pretrained is None:
        return None
    found = cached_file(cfg.model, cfg.pretrained)
    if found is None:
        return None
    blob = Path(found).resolve()
    st = blob.stat()
    # A cache without symlinks keeps files by name, not by content hash: mtime tells a new download.
    return f"pretrained={cfg.pretrained}|blob={blob.name}|size={st.st_size}|mtime_ns={st.st_mtime_ns}|{libs}"
