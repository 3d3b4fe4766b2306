"""This process's memory as the system sees it: the C heap handed back and capped (glibc), the resident set.

Neutral ground: the model loaders (freeing torch weights before compiling)
and the service (its periodic trim, :mod:`agent.service.heap`) both call
:func:`trim_heap`, and the models layer must not import the service layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

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


def limit_heap(arenas: int | None, mmap_threshold: int | None) -> bool:
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
    exist). None leaves a setting as it is. False off glibc, where nothing is
    changed, or when glibc refused a value.
    """
    mallopt = _MALLOPT
    if mallopt is None:
        return False
    ok = True
    if arenas is not None:
        ok = bool(mallopt(_M_ARENA_MAX, arenas)) and ok
    if mmap_threshold is not None:
        ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and ok
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
