"""Encoder precision on the OpenVINO CPU backend: f32 against bf16, speed, closeness, memory.

``python -m bench.precision --model MobileCLIP2-S0 --random-weights`` loads the
encoder twice through :func:`~agent.models.encoder.load_encoder` (the
production path, one cached IR), once per ``--precision``, and measures:

- speed: interleaved rounds (the order flips each round, so a load spike from
  the other users of the machine hits both sides alike) of image batches of
  16 and 4 (photos already at the input size: no resize) and text batches of
  16 and 4 COCO captions; medians of images or queries per second;
- closeness: per-row cosine f32 against bf16 over ``--photos`` real photos
  (image tower) and ``--captions`` COCO captions (text tower), and whether the
  top-1 neighbour stays the same: photo -> other photos, caption -> COCO photos.
  With random weights this is numeric closeness only, not retrieval quality;
- memory: the resident set each precision's compiled towers add, each in a
  fresh interpreter (:data:`_CHILD`), after one forward pass of each tower.

``--accuracy-only`` skips speed and memory (the only way to run it on
``tiny-random``, whose timings mean nothing for the default model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.args import DATA, RESULTS, save_report

PRECISIONS = ("f32", "bf16")
BATCHES = (16, 4)

_CHILD = """
import json, sys
import numpy as np
from agent.config import EncoderConfig
from agent.models.openvino_backend import load_cached
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
cfg = EncoderConfig.model_validate_json(sys.argv[1])
r0 = rss()
loaded = load_cached(cfg, threads=cfg.threads)
assert loaded is not None, "no cached IR: the parent loads the encoder first"
backend, facts = loaded
r1 = rss()
backend.encode_image(np.zeros((16, 3, facts.image_size, facts.image_size), np.float32))
backend.encode_text(np.zeros((1, facts.context_length), np.int64))
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec (it would be the parent's peak).
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps({"precision": backend.precision, "compiled_mb": round(r1 - r0, 1),
    "after_run_mb": round(rss() - r0, 1), "peak_rss_mb": round(hwm, 1)}), flush=True)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.cli.options import add_model_options

    p = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n")[0])
    add_model_options(p)
    p.add_argument("--rounds", type=int, default=7, help="interleaved speed rounds (medians reported)")
    p.add_argument("--reps", type=int, default=3, help="timed batches per precision, batch size and round")
    p.add_argument("--photos", type=int, default=240, help="real photos for the image-tower cosines")
    p.add_argument("--captions", type=int, default=240, help="COCO captions for the text-tower cosines")
    p.add_argument("--rss-runs", type=int, default=2, help="fresh interpreters per precision for memory")
    p.add_argument("--accuracy-only", action="store_true", help="no speed, no memory (tiny-random)")
    p.add_argument("--data", type=Path, default=DATA, help="folder with imagenet_sample/ and coco/")
    p.add_argument("--out", type=Path, default=None, help="result JSON")
    args = p.parse_args(argv)
    args.argv = ["python", "-m", "bench.precision", *(sys.argv[1:] if argv is None else argv)]
    return args


def load_photos(folder: Path, n: int, size: int | None = None) -> list[np.ndarray]:
    """``n`` photos (sorted) as RGB uint8, squashed to ``size`` x ``size`` when given."""
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"need {n} photos in {folder}, found {len(files)}")
    out = []
    for path in files:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            out.append(np.asarray(rgb.resize((size, size)) if size else rgb))
    return out


def load_coco(data: Path, n: int) -> tuple[list[str], list[int], list[np.ndarray]]:
    """The first ``n`` captions, the index of each one's photo, and the COCO photos."""
    from PIL import Image

    rows = [json.loads(line) for line in (data / "coco" / "captions.jsonl").read_text().splitlines()]
    captions: list[str] = []
    owner: list[int] = []
    for i, row in enumerate(rows):
        captions += row["captions"]
        owner += [i] * len(row["captions"])
    if len(captions) < n:
        raise SystemExit(f"need {n} captions in {data / 'coco'}, found {len(captions)}")
    photos = []
    for row in rows:
        with Image.open(data / "coco" / row["image"]) as im:
            photos.append(np.asarray(im.convert("RGB")))
    return captions[:n], owner[:n], photos


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Summary of the per-row cosines of two (n, dim) L2-normalised arrays."""
    cos = (a.astype(np.float64) * b).sum(axis=1)
    return {
        "rows": len(cos),
        "min": round(float(cos.min()), 7),
        "p01": round(float(np.quantile(cos, 0.01)), 7),
        "mean": round(float(cos.mean()), 7),
    }


def top1(queries: np.ndarray, gallery: np.ndarray, *, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index of each query's most similar gallery row (itself left out when asked), and its lead.

    The lead (top-1 minus top-2 cosine) says how near a tie each neighbour is:
    a change of the top-1 under bf16 matters only where the lead is large.
    """
    sims = queries.astype(np.float64) @ gallery.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    best = np.sort(sims, axis=1)[:, -2:]
    return np.asarray(sims.argmax(axis=1)), best[:, 1] - best[:, 0]


def agreement(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> dict[str, float | None]:
    """Share of queries whose top-1 is the same under both precisions, and f32's top-1 lead."""
    same = a[0] == b[0]
    lead = a[1]
    return {
        "agreement": round(float(same.mean()), 4),
        "f32_lead_median": float(f"{np.median(lead):.3g}"),
        "f32_lead_median_where_changed": float(f"{np.median(lead[~same]):.3g}") if (~same).any() else None,
        "bf16_cosine_change_p99": None,  # filled by the caller
    }


def closeness(encoders: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Cosines and top-1 agreement f32 against bf16 on real photos and COCO captions."""
    photos = load_photos(args.data / "imagenet_sample", args.photos)
    captions, _owner, coco = load_coco(args.data, args.captions)
    img = {p: enc.encode_images(photos) for p, enc in encoders.items()}
    txt = {p: enc.encode_text(captions) for p, enc in encoders.items()}
    gal = {p: enc.encode_images(coco) for p, enc in encoders.items()}
    nn_img = {p: top1(img[p], img[p], exclude_self=True) for p in PRECISIONS}
    nn_txt = {p: top1(txt[p], gal[p], exclude_self=False) for p in PRECISIONS}
    i2i, t2i = agreement(nn_img["f32"], nn_img["bf16"]), agreement(nn_txt["f32"], nn_txt["bf16"])
    # How far bf16 moves a query-gallery cosine: set against the leads above.
    i2i["bf16_cosine_change_p99"] = _sim_change(img["f32"], img["f32"], img["bf16"], img["bf16"])
    t2i["bf16_cosine_change_p99"] = _sim_change(txt["f32"], gal["f32"], txt["bf16"], gal["bf16"])
    return {
        "image_cosine": rowwise_cosine(img["f32"], img["bf16"]),
        "coco_image_cosine": rowwise_cosine(gal["f32"], gal["bf16"]),
        "text_cosine": rowwise_cosine(txt["f32"], txt["bf16"]),
        "top1_image_to_image": i2i,
        "top1_text_to_image": t2i,
        "photos": len(photos),
        "captions": len(captions),
        "coco_gallery": len(coco),
    }


def _sim_change(q32: np.ndarray, g32: np.ndarray, q16: np.ndarray, g16: np.ndarray) -> float:
    """99th percentile of |cos(q, g) under f32 - cos(q, g) under bf16| over every pair."""
    diff = np.abs(q32.astype(np.float64) @ g32.T - q16.astype(np.float64) @ g16.T)
    return float(f"{np.quantile(diff, 0.99):.3g}")


def _rate(fn: Any, items: list[Any], reps: int) -> float:
    """Items per second over ``reps`` calls of ``fn(items)``."""
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(items)
    return len(items) * reps / (time.perf_counter() - t0)


def speed(encoders: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds: images/s and queries/s per precision and batch size (medians, ratios)."""
    size = encoders["f32"].image_size
    photos = load_photos(args.data / "imagenet_sample", max(BATCHES), size)
    captions = _captions(args.data)
    rates: dict[str, list[float]] = {}
    for enc in encoders.values():  # warm-up: first calls allocate
        enc.encode_images(photos)
        enc.encode_text(captions[: max(BATCHES)])
    for r in range(args.rounds):
        order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
        for prec in order:
            enc = encoders[prec]
            for b in BATCHES:
                rates.setdefault(f"image_b{b}_{prec}", []).append(
                    _rate(enc.encode_images, photos[:b], args.reps)
                )
                rates.setdefault(f"text_b{b}_{prec}", []).append(
                    _rate(enc.encode_text, captions[:b], args.reps)
                )
    medians = {k: round(float(np.median(v)), 2) for k, v in rates.items()}
    ratios = {
        f"{tower}_b{b}_bf16_over_f32": round(medians[f"{tower}_b{b}_bf16"] / medians[f"{tower}_b{b}_f32"], 3)
        for tower in ("image", "text")
        for b in BATCHES
    }
    return {
        "unit": "images/s (image_*), queries/s (text_*)",
        "medians": medians,
        "ratios": ratios,
        "rounds": {k: [round(x, 2) for x in v] for k, v in rates.items()},
    }


def _captions(data: Path) -> list[str]:
    """The first caption of every COCO photo (distinct texts for the speed rounds)."""
    rows = [json.loads(line) for line in (data / "coco" / "captions.jsonl").read_text().splitlines()]
    return [row["captions"][0] for row in rows]


def memory(cfgs: dict[str, Any], runs: int) -> dict[str, Any]:
    """Resident MB each precision's compiled towers add, each measured in a fresh interpreter."""
    rows: dict[str, list[dict[str, Any]]] = {p: [] for p in PRECISIONS}
    for _ in range(runs):
        for prec in PRECISIONS:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, cfgs[prec].model_dump_json()],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"memory child ({prec}) failed: {done.stderr[-2000:]}")
            rows[prec].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {
        p: {k: round(float(np.median([r[k] for r in rows[p]])), 1) for k in ("compiled_mb", "after_run_mb")}
        for p in PRECISIONS
    }
    return {"median": summary, "runs": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.models.encoder import load_encoder
    from bench.args import encoder_from_args
    from bench.run_haystack import git_commit, machine_info

    base = encoder_from_args(args).model_copy(update={"backend": "openvino", "batch_size": max(BATCHES)})
    cfgs = {p: base.model_copy(update={"precision": p}) for p in PRECISIONS}
    machine = machine_info()
    encoders = {p: load_encoder(cfg) for p, cfg in cfgs.items()}
    used = {p: getattr(enc.backend, "precision", None) for p, enc in encoders.items()}
    if used != {p: p for p in PRECISIONS}:
        raise SystemExit(f"asked for {PRECISIONS}, compiled {used}")
    enc = encoders["f32"]
    report: dict[str, Any] = {
        "bench": "precision",
        "what": __doc__.split("\n")[0],
        "command": " ".join(args.argv),
        "git": git_commit(),
        "machine": machine,
        "encoder": {
            "name": enc.name,
            "backend": enc.backend.name,
            "device": "cpu",
            "threads": base.threads,
            "precisions": used,
            "meaningless": enc.meaningless,
        },
        "closeness": closeness(encoders, args),
    }
    if not args.accuracy_only:
        report["speed"] = speed(encoders, args)
        report["memory"] = memory(cfgs, args.rss_runs)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    name = report["encoder"]["name"].split(":")[0]
    out: Path = args.out or RESULTS / f"encoder-precision-{name}-openvino-cpu.json"
    report["summary"] = {
        "closeness": report["closeness"],
        **(
            {"speed": report["speed"]["medians"], "ratios": report["speed"]["ratios"]}
            if "speed" in report
            else {}
        ),
        **({"memory": report["memory"]["median"]} if "memory" in report else {}),
        "loadavg": [report["machine"]["loadavg_start"], report["machine"]["loadavg_end"]],
    }
    save_report(out, report, show="summary")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
