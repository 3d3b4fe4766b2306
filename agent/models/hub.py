"""Where a pretrained tag's weights come from: the Hugging Face cache, the hub, or nowhere (fast).

open_clip downloads a tag's weights with ``hf_hub_download``, whose HTTP
layer retries a refused or timed-out connection with backoff, for every
candidate file: on a machine without a network, ``vmr ingest`` with the
default model waited about a minute before its typed error. So before the
real download path runs, :func:`plan` looks once:

* the weights are in the local cache and the hub answers one short probe
  (:data:`PROBE_SECONDS`): the real path, unchanged (it checks for a newer
  revision and loads the cached file);
* in the cache, hub unreachable (or ``HF_HUB_OFFLINE`` set): the cached file
  is loaded directly, with the tag's preprocessing, and no network call;
* not in the cache, hub unreachable: :class:`~agent.errors.WeightsUnavailableError`
  at once, saying why;
* not in the cache, hub reachable: the real download path.

Tags open_clip fetches by URL rather than from the hub, and checkpoints,
pass through untouched. The probe is one HTTP ``HEAD`` of the hub's
endpoint (``HF_ENDPOINT``) through huggingface_hub's own client, so its
proxy settings and offline switch apply. Only a 2xx or 3xx answer counts as
reachable: a proxy or captive portal answering 404 or 5xx for a hub it cannot
reach would otherwise send an offline machine into the download's retries.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from agent.config import cache_dir

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
"""Seconds the one reachability probe of the hub may take."""


@dataclass(frozen=True)
class WeightsPlan:
    """How to call ``open_clip.create_model`` for a tag.

    ``pretrained``: the tag (real path) or the cached file's path.
    ``preprocess``: the tag's preprocessing, forced when loading a file
    (open_clip applies it only for a tag). ``unavailable``: why the weights
    cannot be had (then nothing is to be loaded).
    """

    pretrained: str
    preprocess: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None


def plan(model: str, tag: str) -> WeightsPlan:
    """The plan for ``model`` with pretrained ``tag`` (see the module docstring); never raises for I/O."""
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, tag)
    hub_path = str(cfg.get("hf_hub") or "") if cfg else ""
    if not hub_path:
        return WeightsPlan(tag)  # a URL download or an unknown tag: open_clip's own path and errors
    repo, filename = os.path.split(hub_path)  # "org/name/" names the default file, as open_clip reads it
    filename = filename or HF_WEIGHTS_NAME
    reason = _unreachable()
    if reason is None:
        return WeightsPlan(tag)
    cached = _cached(repo, [_safetensors(filename), filename])  # the order open_clip tries them in
    if cached is not None:
        log.warning("Hugging Face hub unreachable (%s): loading %s:%s from the cache", reason, model, tag)
        return WeightsPlan(cached, preprocess=dict(cfg))
    return WeightsPlan(tag, unavailable=f"not in the local Hugging Face cache and {reason}")


def cached_file(model: str, tag: str) -> str | None:
    """The file open_clip would load for ``model``:``tag`` from the local Hugging Face cache, or None.

    None also for a tag open_clip fetches by URL, or an unknown one. No network
    call; open_clip is imported only the first time a tag is looked up
    (:func:`_hub_files`), so an OpenVINO cache hit of pretrained weights holds
    neither open_clip nor torch.
    """
    where = _hub_files(model, tag)
    return None if where is None else _cached(*where)


def _hub_files(model: str, tag: str) -> tuple[str, list[str]] | None:
    """The hub repository of ``model``:``tag`` and its files in the order open_clip tries them; None: not on the hub.

    open_clip's pretrained table lives in a module that imports torch, so each
    answer is remembered in ``cache_dir()/hub-files.json`` per open_clip version
    (a lost write only costs the import next time).
    """
    memo_path = cache_dir() / "hub-files.json"
    key = f"{model}:{tag}|open_clip={_open_clip_version()}"
    try:
        memo = dict(json.loads(memo_path.read_text()))
    except (OSError, ValueError, TypeError):
        memo = {}
    if key in memo:
        found = memo[key]
        if found is None:
            return None
        # Anything but [repo, [names...]] is damage (a torn write, another program): look it up again.
        if (
            isinstance(found, list)
            and len(found) == 2
            and isinstance(found[0], str)
            and isinstance(found[1], list)
            and found[1]
            and all(isinstance(n, str) for n in found[1])
        ):
            return found[0], list(found[1])
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, tag)
    hub_path = str(cfg.get("hf_hub") or "") if cfg else ""
    where = None
    if hub_path:
        repo, filename = os.path.split(hub_path)
        filename = filename or HF_WEIGHTS_NAME
        where = (repo, [_safetensors(filename), filename])
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps({**memo, key: where}, indent=1))
        os.replace(tmp, memo_path)
    except OSError as exc:
        log.debug("could not remember %s in %s: %s", key, memo_path, exc)
    return where


def _open_clip_version() -> str:
    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _safetensors(filename: str) -> str:
    """The ``.safetensors`` file open_clip tries first for ``filename``."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if filename == HF_WEIGHTS_NAME:
        return HF_SAFE_WEIGHTS_NAME
    return filename[:-4] + ".safetensors" if filename.endswith((".bin", ".pth")) else filename


def _cached(repo: str, names: list[str]) -> str | None:
    """The first of ``names`` in the local cache of ``repo`` (revision ``main``), else None."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        try:
            found = try_to_load_from_cache(repo, name)
        except Exception:  # a malformed cache: as if absent; the real path reports it
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _unreachable() -> str | None:
    """Why the hub cannot be reached now (offline mode, or the probe failed); None when it answers."""
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        answer = get_session().head(constants.ENDPOINT, timeout=PROBE_SECONDS, follow_redirects=False)
    except Exception as exc:  # refused, timed out, DNS, proxy: all mean no download will work now
        return f"the hub at {constants.ENDPOINT} is unreachable ({type(exc).__name__}: {exc})"
    status = int(answer.status_code)
    if not 200 <= status < 400:  # the hub's front page answers 200; an error page is someone else
        return f"the hub at {constants.ENDPOINT} is unreachable (it answered HTTP {status}, not as the hub)"
    return None
