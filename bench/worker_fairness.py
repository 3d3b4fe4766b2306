"""Encoder-queue wait under the shared batch worker's round-robin, with a modelled encoder.

Why a model: on the shared 2-core machine a 20-stream ``bench.service_load`` run
gets half a core and is several times over capacity, so queue waits there say
how overloaded the machine was, not how the worker orders its lanes. Here the
real :class:`~agent.service.batch_worker.BatchWorker` serves ``--lanes`` live
streams whose super-images arrive every ``--period`` seconds (2 fps, a 2x2
grid: 2 s), staggered; the batch function sleeps ``--item-seconds`` per item
(0.1 s: MobileCLIP2-S0 on OpenVINO in f32, batch 16 in 1.6 s, the quiet 20-stream
run of ``service-load-20-60s-MobileCLIP2-S0-openvino-cpu.json`` before bf16; that
file now holds the bf16 run, ~0.08 s per item: 0.84 s for a mean batch of 10.8). A lane that
holds ``--queue`` items drops the new one (a live source's latest-wins policy),
counted. Time is scaled by ``--speed`` (sleeps shortened, figures reported in
model seconds), so a run costs little CPU: at the defaults 8 cases x 120 model s / 5 = ~3 min wall.

Each policy runs in turn: ``resume`` (the worker now: the next batch starts after
the lane served last) and ``legacy`` (one lane later each batch, as before).
Figures per policy: wait p50/p95/max (arrival -> batch start, model seconds),
items encoded, items dropped.

    python -m bench.worker_fairness --lanes 28 --seconds 120 --batch 16 8 --period 3 2

``utilisation``: lanes x item seconds / period (above 1 the encoder cannot keep up
and lanes drop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import numpy as np

from agent.channels.base import WorkItem
from agent.service.batch_worker import BatchWorker
from bench.service_probes import legacy_round_robin

RESULTS = "bench/results/worker-fairness.json"


class _Sink:
    """A stream that takes results and never retries (no model state behind the lane)."""

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        pass

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        return []


async def run(
    policy: str,
    *,
    lanes: int,
    seconds: float,
    batch: int,
    item_s: float,
    period: float,
    queue: int,
    speed: float,
) -> dict[str, Any]:
    """One policy for ``seconds`` of model time; waits in model seconds."""
    arrived: dict[int, float] = {}
    waits: list[float] = []

    def encode(items: list[WorkItem]) -> np.ndarray:
        now = time.perf_counter()
        waits.extend((now - arrived.pop(i.id)) * speed for i in items)
        time.sleep(item_s * len(items) / speed)
        return np.zeros((len(items), 1), np.float32)

    worker = BatchWorker("image", encode, batch_size=batch, queue_size=queue)
    if policy == "legacy":
        legacy_round_robin(worker)
    dropped = 0

    async def camera(k: int) -> None:
        nonlocal dropped
        name = f"cam{k}"
        worker.open(name, _Sink())
        await asyncio.sleep(period * k / lanes / speed)  # staggered
        t = 0.0
        while True:
            if worker.depth(name) >= queue:
                dropped += 1  # latest-wins: a live source does not wait
            else:
                item = WorkItem(name, "visual", "image", None, None, t, t + period)
                arrived[item.id] = time.perf_counter()
                await worker.submit(name, [item])
            t += period
            await asyncio.sleep(period / speed)

    async with worker:
        cams = [asyncio.create_task(camera(k)) for k in range(lanes)]
        await asyncio.sleep(seconds / speed)
        for c in cams:
            c.cancel()
        await asyncio.gather(*cams, return_exceptions=True)
    w = np.asarray(waits)
    return {
        "policy": policy,
        "batch": batch,
        "encoded": len(w),
        "dropped": dropped,
        "wait_p50_s": round(float(np.percentile(w, 50)), 3),
        "wait_p95_s": round(float(np.percentile(w, 95)), 3),
        "wait_max_s": round(float(w.max()), 3),
    }


def main(argv: list[str] | None = None) -> None:
    import json
    import sys
    from pathlib import Path

    from bench.args import save_report
    from bench.run_haystack import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lanes", type=int, default=28, help="live streams (20 cameras + 8 needle streams)")
    p.add_argument("--seconds", type=float, default=120.0, help="model seconds per policy")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 8])
    p.add_argument("--item-seconds", type=float, default=0.1)
    p.add_argument(
        "--period", type=float, nargs="+", default=[3.0, 2.0], help="seconds between a lane's items"
    )
    p.add_argument("--queue", type=int, default=8, help="lane capacity (ServiceConfig.encoder_queue)")
    p.add_argument("--speed", type=float, default=5.0, help="model seconds per wall second")
    p.add_argument("--out", type=Path, default=Path(RESULTS))
    a = p.parse_args(argv)
    machine = machine_info()
    rows = []
    for period, batch in ((pe, b) for pe in a.period for b in a.batch):
        for policy in ("legacy", "resume"):
            row = asyncio.run(
                run(
                    policy,
                    lanes=a.lanes,
                    seconds=a.seconds,
                    batch=batch,
                    item_s=a.item_seconds,
                    period=period,
                    queue=a.queue,
                    speed=a.speed,
                )
            )
            row = {"period_s": period, "utilisation": round(a.lanes * a.item_seconds / period, 2), **row}
            print(json.dumps(row), flush=True)
            rows.append(row)
    argv_used = sys.argv[1:] if argv is None else argv
    report = {
        "bench": "worker_fairness",
        "command": " ".join(["python", "-m", "bench.worker_fairness", *argv_used]),
        "machine": {**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "rows": rows,
    }
    save_report(a.out, report)


if __name__ == "__main__":
    main()
