"""Cold start: process start to the first embedding, in a fresh Python process each run.

Run it as ``python -m bench.cold_start --model MobileCLIP2-S0 --random-weights --backend openvino
--label after`` (``--label before`` on the commit before a change). Each run starts a new
interpreter that loads the encoder (:func:`agent.models.encoder.load_encoder`) and embeds one
image; the parent times from just before the process is started to the line the child prints
after that embedding. One untimed run first fills the OpenVINO cache (a conversion when the
cache lacks the entry), so the timed runs measure the *cache hit*: what every later start of
``vmr`` costs. The child also says whether it built the torch model (it counts calls of the
builder), where its time went (imports, encoder load, first embedding) and its peak RSS
(``ru_maxrss`` after the first embedding).

The result JSON (``--out``, default ``bench/results/cold-start-MODEL-BACKEND.json``) keeps one
entry per ``--label``, so before and after sit in one file, each with its command, commit and
the machine's load average (on a shared machine wall time stretches with the load).
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

from bench.args import RESULTS

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
import agent.models.encoder as encoder
import agent.models.weights as weights
from agent.config import EncoderConfig
builds = []
real = weights.build_model
def counting(cfg):
    builds.append(cfg.model)
    return real(cfg)
weights.build_model = counting
if hasattr(encoder, "build_model"):
    encoder.build_model = counting
t1 = time.perf_counter()
enc = encoder.load_encoder(EncoderConfig.model_validate_json(sys.argv[1]))
t2 = time.perf_counter()
enc.encode_images([np.full((256, 256, 3), 128, np.uint8)])
t3 = time.perf_counter()
print(json.dumps({
    "import_s": t1 - t0, "load_s": t2 - t1, "first_embedding_s": t3 - t2,
    "torch_model_built": bool(builds), "backend": enc.backend.name,
    "cache_hit": getattr(enc.backend, "cache_hit", None), "name": enc.name,
    "precision": getattr(enc.backend, "precision", None),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}), flush=True)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.cli.options import add_model_options

    p = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n")[0])
    add_model_options(p)
    p.add_argument("--runs", type=int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--label", default="after", help="entry of the result file (before, after, ...)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (entries of other labels are kept)")
    args = p.parse_args(argv)
    args.argv = ["python", "-m", "bench.cold_start", *(sys.argv[1:] if argv is None else argv)]
    return args


def one_run(cfg_json: str) -> dict[str, Any]:
    """Start a fresh interpreter, load the encoder, embed one image; wall seconds from the parent."""
    t0 = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, cfg_json], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        raise SystemExit(f"cold-start child failed:\n{child.stderr[-4000:]}")
    row: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    # The child prints as its last act: interpreter exit is not part of the start.
    return {
        "wall_s": round(wall, 3),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.args import encoder_from_args
    from bench.run_haystack import git_commit, machine_info

    cfg_json = encoder_from_args(args).model_dump_json()
    load_start = [round(x, 2) for x in os.getloadavg()]
    warm = one_run(cfg_json)  # fills the cache: the timed runs are cache hits
    runs = [one_run(cfg_json) for _ in range(args.runs)]
    machine = machine_info()
    machine["loadavg_start"] = load_start
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "command": " ".join(args.argv),
        "git": git_commit(),
        "machine": machine,
        "warm_up": warm,
        "runs": runs,
        "median_wall_s": round(float(np.median([r["wall_s"] for r in runs])), 3),
        "median_load_s": round(float(np.median([r["load_s"] for r in runs])), 3),
        "median_peak_rss_mb": round(float(np.median([r.get("peak_rss_mb", np.nan) for r in runs])), 1),
        "torch_model_built": any(r["torch_model_built"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    backend = result["runs"][0]["backend"]
    out: Path = args.out or RESULTS / f"cold-start-{args.model}-{backend}.json"
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    report.setdefault("bench", "cold_start")
    report.setdefault("what", __doc__.split("\n")[0])
    report.setdefault("labels", {})[args.label] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_wall_s", "median_load_s", "torch_model_built")}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
