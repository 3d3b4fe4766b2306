"""The on-disk cache of converted OpenVINO models (IR), one folder per model and weights.

An entry lives under ``cache_dir()/openvino/<arch>-<key>/``: ``image.xml``/``.bin``,
``text.xml``/``.bin`` and ``meta.json`` (the model's facts and every file's size).
``key`` hashes the architecture, the weights' identity, the OpenVINO version and
:data:`FORMAT`. An entry appears whole or not at all (written to a temporary
folder, then renamed); one damaged later (a file shorter than recorded, an IR
OpenVINO cannot read) is discarded with a warning so the next save writes it anew.
Used by :mod:`agent.models.openvino_backend`; ``ov`` is the imported ``openvino`` module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agent.config import cache_dir

log = logging.getLogger(__name__)

# Bump when the towers or the conversion change: old cache entries are then ignored.
FORMAT = 2
TOWERS = ("image", "text")


def cache_key(arch: str, weights: str, ov_version: str) -> str:
    """Hex key of a converted model: architecture, weights identity, OpenVINO version, format."""
    parts = (arch, weights, ov_version, FORMAT)
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def cache_folder(arch: str, weights: str, ov_version: str, root: Path | None = None) -> Path:
    """Where the IR of ``arch`` with ``weights`` lives (``root`` defaults to ``cache_dir()/openvino``)."""
    base = root if root is not None else cache_dir() / "openvino"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", arch)
    return base / f"{safe}-{cache_key(arch, weights, ov_version)}"


def save_entry(ov: Any, models: dict[str, Any], folder: Path, meta: dict[str, Any]) -> None:
    """Write the IR into ``folder`` atomically (temporary folder, then rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for which, model in models.items():
            # fp16 compression (save_model's default) would cost the 1e-4 equality.
            ov.save_model(model, str(tmp / f"{which}.xml"), compress_to_fp16=False)
        files = {path.name: path.stat().st_size for path in sorted(tmp.iterdir())}
        (tmp / "meta.json").write_text(json.dumps({**meta, "files": files}, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
            # Another process wrote the same entry first: theirs is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_entry(ov: Any, folder: Path) -> dict[str, Any] | None:
    """The entry's two models; None when there is no entry or it is damaged (then discarded, logged)."""
    if not (folder / "meta.json").is_file():
        return None
    why = _damage(folder)
    if why is None:
        core = ov.Core()
        try:
            return {which: core.read_model(str(folder / f"{which}.xml")) for which in TOWERS}
        except Exception as exc:  # OpenVINO raises RuntimeError for a malformed IR
            why = f"OpenVINO cannot read it: {type(exc).__name__}: {exc}"
    _discard(folder, why)
    return None


def _damage(folder: Path) -> str | None:
    """What is wrong with the entry's files against the sizes its meta.json recorded; None: nothing seen.

    Sizes catch a truncated copy (a crash or a full disk); entries written
    before sizes were recorded are not checked. Hashing the IR would catch
    more but cost the cold start a full read of it.
    """
    try:
        files = dict(json.loads((folder / "meta.json").read_text()).get("files") or {})
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return f"meta.json unreadable: {exc}"
    for name, size in files.items():
        found = (folder / name).stat().st_size if (folder / name).is_file() else None
        if found != size:
            return f"{name} holds {found} bytes, {size} were written"
    return None


def _discard(folder: Path, why: str) -> None:
    """Remove a damaged cache entry so that the save after the conversion writes it anew."""
    log.warning("openvino: cache entry %s is damaged (%s): converting from torch again", folder, why)
    # Renamed first (atomic): a process reading it meanwhile keeps its open files.
    trash = folder.with_name(f".{folder.name}.damaged.{os.getpid()}")
    try:
        os.rename(folder, trash)
    except OSError as exc:  # read-only, or another process discarded it first
        log.warning("openvino: could not discard %s: %s", folder, exc)
        return
    shutil.rmtree(trash, ignore_errors=True)
