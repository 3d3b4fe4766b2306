"""This process's memory as the system sees it: the C heap handed back and capped (glibc), the resident set.

Neutral ground: the model loaders (freeing torch weights before compiling)
and the service (its periodic trim, :mod:`agent.service.heap`) both call
:func:`trim_heap`, and the models layer must not import the service layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: its allocator decides when to give memory back
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _load_trim()


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the system; True when glibc released some.

    Blocking (milliseconds to tens of milliseconds on a GiB heap): call it in a thread.
    False off glibc, where it does nothing.
    """
    return bool(_TRIM(0)) if _TRIM is not None else False


_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's malloc.h


def _load_mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt  # type: ignore[no-any-return]


_MALLOPT = _load_mallopt()


MMAP_THRESHOLD_MIN = 4096
"""Smallest mmap threshold accepted (bytes, a page): below it every small allocation is a syscall."""
MMAP_THRESHOLD_MAX = 32 * 1024**2
"""glibc's own ceiling on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``); mallopt refuses more."""

# The operator's own allocator settings, which glibc reads at start: when present they win.
_ARENA_ENV, _ARENA_TUNABLE = "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"
_MMAP_ENV, _MMAP_TUNABLE = "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"


@dataclass(frozen=True)
class HeapPlan:
    """What :func:`limit_heap` sets: None leaves a setting to glibc (or to the environment)."""

    arenas: int | None
    mmap_threshold: int | None
    summary: str
    """One line for the log: each setting's value and where it comes from."""


def _from_env(environ: Mapping[str, str], var: str, tunable: str) -> str | None:
    """The operator's value of a malloc setting (``VAR=v`` or ``GLIBC_TUNABLES=...tunable=v...``)."""
    if environ.get(var, "").strip():
        return f"{var}={environ[var].strip()}"
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        if item.partition("=")[0].strip() == tunable:
            return f"GLIBC_TUNABLES {item.strip()}"
    return None


def plan_heap(arenas: int, mmap_threshold: int, environ: Mapping[str, str]) -> HeapPlan:
    """Decide :func:`limit_heap`'s settings; pure (tests read it without touching the allocator).

    ``arenas`` (count) and ``mmap_threshold`` (bytes): 0 leaves glibc alone. A value the operator
    set in ``environ`` (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_`` or the matching
    ``GLIBC_TUNABLES``) wins over the config, since mallopt would silently override it.
    """
    parts: list[str] = []

    def pick(name: str, value: int, var: str, tunable: str) -> int | None:
        env = _from_env(environ, var, tunable)
        if env is not None:
            parts.append(f"{name} from the environment ({env}; config's {value or 'default'} not applied)")
            return None
        if value <= 0:
            parts.append(f"{name} glibc's default")
            return None
        parts.append(f"{name} {value} (config)")
        return value

    a = pick("arenas", arenas, _ARENA_ENV, _ARENA_TUNABLE)
    m = pick("mmap threshold", mmap_threshold, _MMAP_ENV, _MMAP_TUNABLE)
    return HeapPlan(a, m, "glibc heap: " + ", ".join(parts))


def limit_heap(arenas: int, mmap_threshold: int, environ: Mapping[str, str] | None = None) -> bool:
    """Cap glibc's malloc arenas and fix its mmap threshold (bytes) for this process.

    Why: glibc gives each thread that allocates its own arena, up to 8 per
    core, and each arena keeps what its thread freed; a service runs a
    decoder thread per stream. Its mmap threshold also slides up to 32 MiB
    once a large block is freed, after which every 267 kB sampled frame
    lands in an arena as well. With ``arenas=2`` and a fixed
    ``mmap_threshold`` of 128 KiB, large blocks go straight back to the
    system when freed: an open 720p decoder thread holds 6.6 MiB instead of
    11.1 (``bench/results/decoder_rss.json``). Takes effect for arenas created afterwards:
    call it before threads start (glibc freezes the limit once 8 arenas
    exist). 0 leaves a setting to glibc; so does the operator's own environment
    variable (``environ``, default ``os.environ``; see :func:`plan_heap`).
    Logs what it applied, once a call. False off glibc, where nothing is
    changed, or when glibc refused a value.
    """
    plan = plan_heap(arenas, mmap_threshold, os.environ if environ is None else environ)
    mallopt = _MALLOPT
    if mallopt is None:
        log.info("not glibc: allocator settings left alone")
        return False
    ok = True
    if plan.arenas is not None:
        ok = bool(mallopt(_M_ARENA_MAX, plan.arenas)) and ok
    if plan.mmap_threshold is not None:
        ok = bool(mallopt(_M_MMAP_THRESHOLD, plan.mmap_threshold)) and ok
    log.info("%s%s", plan.summary, "" if ok else " (glibc refused a value)")
    return ok


def rss_bytes() -> int:
    """Resident set size of this process in bytes (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def process_memory() -> dict[str, float]:
    """This process's resident set now (``rss_mb``) and at its peak (``peak_rss_mb``), MiB; its ``pid``."""
    out: dict[str, float] = {"pid": float(os.getpid())}
    with contextlib.suppress(OSError):  # not Linux: no figures
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out
