"""``vmr bench compression``: memory strategies at 1/3 .. 1/100 of dense tokens, image queries only.

The strategy comparison of ``vmr bench haystack run`` without speed passes and text queries (so
it runs with ``classical-hog`` too); dense items per grid are cached next to the build. One run
writes ``<name>.json`` (every row, the command, the machine), ``<name>.md`` (fidelity, R1@0.5 and
bytes per hour of footage per grid, strategy and budget, and the issue's targets checked for
:data:`CHOSEN`) and ``<name>-fidelity.png`` (fidelity against budget, one panel per grid).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.models.encoder import load_encoder
from agent.store.atomic import write_bytes, write_json
from bench import dense_inputs, fidelity, haystack, oracle, pooled, recency
from bench.args import command_line, encoder_from_args
from bench.report import _pyplot
from bench.run_haystack import DEFAULT_FRACTIONS, DEFAULT_RESULTS, git_commit, machine_info, run_name
from bench.targets import PEERS, at, summary, targets

CHOSEN = "svd-mean-energy-fill"
"""The engine's default rules (cosine merging of mean representatives, energy scorer) with the
budget filled."""
DEFAULT_STRATEGIES = (
    "uniform",
    "selection",
    "avgpool",
    "svd-smore-fill",
    "svd-mean-fill",
    "svd-mean-peak-fill",
    "svd-mean-energy-fill",
    "svd-mean-proj-fill",
    "svd-ward-fill",
    "svd-ward-peak-fill",
    "svd-ward-energy-fill",
    "svd-ward-young-energy-fill",
    "svd-ward-average-fill",
    "svd-subspace-fill",
    "svd-ward-peak-2res-fill",
    "svd-ward-energy-2res-fill",
    "svd-ward-energy-2res4-fill",
    "svd-ward-energy-runs4-fill",
    "svd-ward-energy-runs8-fill",
)


def run(
    params: haystack.HaystackParams,
    encoder_cfg: Any,
    *,
    data: Path,
    cache: Path,
    grids: Sequence[int],
    fractions: Sequence[float],
    strategies: Sequence[str],
    command: str,
    seeds: Sequence[int] = (0,),
    image_query: str = "still-shot",
) -> dict[str, Any]:
    """Per seed: build (cached), encode dense items (cached), compare strategies; pool the seeds.

    ``image_query``: image queries as the still shot of their photo at each grid (the engine's
    default) or as the photo alone (``photo``); the run's name ends in the mode.
    ``rows`` are every seed's rows (each with ``seed``); ``pooled`` one row per cell over the
    seeds with Wilson intervals (:mod:`bench.pooled`), which the tables, plot and targets read.
    """
    t0 = time.perf_counter()
    machine = machine_info()
    enc = load_encoder(encoder_cfg)
    fps = float(params.fps) if params.fps <= 5 else 2.0
    rows: list[dict[str, Any]] = []
    builds: dict[str, Any] = {}
    oracles = any(name in oracle.ORACLES for name in strategies)
    for seed in seeds:
        seeded = haystack.make_params(**{**params.model_dump(), "seed": seed})
        hs = haystack.build(seeded, data, cache)
        items, stats = dense_inputs.dense_items(
            hs.video, fps=fps, grids=grids, encoder=enc, cache_dir=hs.root
        )
        queries = dense_inputs.queries_by_grid({"image": hs.gt_image}, enc, grids, image_query)
        scenes = json.loads(hs.manifest.read_text())["scenes"]
        for row in fidelity.compare(
            items,
            queries,
            duration=params.duration,
            fps=fps,
            fractions=fractions,
            strategies=strategies,
            extra=oracle.strategies(scenes),
        ):
            row["image"]["late"] = recency.late_mask(queries[row["grid"]]["image"][0], params.duration)
            rows.append({"seed": seed, **row})
        builds[str(seed)] = {
            # The encoder-free kept counts, only for runs that asked for the oracles.
            **({"ceilings": oracle.ceilings_by_grid(items, fractions, scenes)} if oracles else {}),
            "root": str(hs.root),
            "items": {str(g): int(it.starts.shape[0]) for g, it in items.items()},
            "item_stats": stats,
            "queries": len(queries[grids[0]]["image"][0]),
        }
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    first = builds[str(seeds[0])]
    tag = "-".join(str(s) for s in seeds)
    suffix = f"-{image_query}"  # runs before the choice existed (no suffix) used the photo alone
    if oracles:
        suffix += "-oracles"
    return {
        "name": f"compression-{run_name(params).rsplit('-s', 1)[0]}-s{tag}-{dense_inputs.slug(enc.name)}{suffix}",
        "command": command,
        "machine": machine,
        "git": git_commit(),
        "encoder": {"name": enc.name, "dim": enc.dim, "meaningless": enc.meaningless},
        "haystack": {
            "params": params.model_dump(),
            "seeds": list(seeds),
            "sample_fps": fps,
            "builds": builds,
        },
        "image_query": image_query,
        "items": first["items"],
        "queries": sum(b["queries"] for b in builds.values()),
        "procedure": fidelity.__doc__,
        "pooling": pooled.__doc__,
        "chosen": CHOSEN,
        **judged(rows, grids, strategies),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def judged(rows: Sequence[dict[str, Any]], grids: Sequence[int], strategies: Sequence[str]) -> dict[str, Any]:
    """What the report derives from every seed's rows: the pooled cells, the targets and means
    on them, each SVD variant paired against :data:`CHOSEN` and :data:`CHOSEN` against
    :data:`PEERS` (fidelity, budgets <= 1/10)."""
    merged = pooled.pool(rows)
    return {
        "targets": targets(merged, CHOSEN),
        "summary": summary(merged),
        "head_to_head": {
            name: pooled.head_to_head(merged, name, CHOSEN, grids, 1 / 10)
            for name in strategies
            if name.startswith("svd") and name != CHOSEN
        },
        "against_peers": {
            peer: pooled.head_to_head(merged, CHOSEN, peer, grids, 1 / 10)
            for peer in PEERS
            if peer in strategies
        },
        "pooled": merged,
    }


def markdown(rep: dict[str, Any]) -> str:
    """Per grid: one row per strategy, fidelity / R1@0.5 / KiB per hour at each budget."""
    rows = rep["pooled"]
    fractions = sorted({r["fraction"] for r in rows if r["strategy"] != "dense"}, reverse=True)
    lines = [
        f"# {rep['name']}",
        "",
        f"Command: `{rep['command']}`",
        "",
        f"Encoder {rep['encoder']['name']}; haystack seeds {rep['haystack']['seeds']} pooled; dense items "
        f"per grid {rep['items']}; {rep['queries']} image queries in all; load average "
        f"{rep['machine']['loadavg_start']} -> {rep['machine']['loadavg_end']} (shared machine). Cells: "
        "fidelity to dense top-1 % [Wilson 95 % interval] / R1@0.5 % / KiB per hour of footage "
        "(two resolutions: of which the finer level, in parentheses). One run; figures are pooled "
        "counts over the seeds, not means of means.",
        "",
    ]
    for grid in sorted({r["grid"] for r in rows}):
        dense = at(rows, grid, "dense", 1.0)
        assert dense is not None
        lines += [
            f"## grid {grid} (dense: R1@0.5 {dense['image']['R1@0.5']:.0f} %, "
            f"{dense['bytes_per_hour'] / 1024:.0f} KiB/h, {dense['tokens']:.0f} tokens)",
            "",
            "| strategy | " + " | ".join(f"1/{round(1 / f)}" for f in fractions) + " |",
            "|---" * (len(fractions) + 1) + "|",
        ]
        for name in dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "dense"):
            cells = []
            for f in fractions:
                r = at(rows, grid, name, f)
                cells.append("-" if r is None else _cell(r))
            bold = "**" if name == rep["chosen"] else ""
            lines.append(f"| {bold}{name}{bold} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Means over the grids",
        "",
        "Fidelity and fidelity on the queries dense answers right, at 1/10 and 1/30; fidelity at 1/100.",
        "",
        "| strategy | fidelity | on dense hits | at 1/100 |",
        "|---|---|---|---|",
    ]
    for name, m in rep.get("summary", {}).items():
        vals = [m["fidelity"], m["fidelity_on_dense_hits"], m["fidelity_1/100"]]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    lines += pooled.head_to_head_lines(
        rep.get("head_to_head", {}), "Each SVD variant against the default", "variant"
    )
    lines += pooled.head_to_head_lines(
        rep.get("against_peers", {}), f"The default ({rep['chosen']}) against its peers", "peer"
    )
    lines += recency.lines(rows, rep["chosen"])
    lines += oracle.lines(rows, rep["haystack"]["builds"], rep["chosen"])
    lines += [
        "",
        "## Targets (issue #15) for " + rep["chosen"],
        "",
        "```",
        json.dumps(rep["targets"], indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _cell(r: dict[str, Any]) -> str:
    ci = r["image"].get("fidelity_ci")
    fid = f"{r['image']['fidelity']:.0f}" + ("" if ci is None else f" [{ci[0]:.0f}–{ci[1]:.0f}]")
    text = f"{fid} / {r['image']['R1@0.5']:.0f} / {r['bytes_per_hour'] / 1024:.0f}"
    fine = r.get("detail_bytes_per_hour")
    return text if fine is None else f"{text} ({fine / 1024:.0f})"


def plot(rows: Sequence[dict[str, Any]], path: Path, *, title: str, chosen: str) -> None:
    """Fidelity against budget per grid: the chosen method bold, the old SVD rules dashed,
    the other SVD variants thin, the peers (uniform, selection, avgpool) dotted."""
    plt = _pyplot()
    grids = sorted({r["grid"] for r in rows})
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 3.8), squeeze=False, sharey=True)
    names = list(dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "dense"))
    colours = plt.get_cmap("tab20")
    for ax, grid in zip(axes[0], grids, strict=True):
        for i, name in enumerate(names):
            pts = sorted(
                (r["fraction"], r["image"]["fidelity"])
                for r in rows
                if r["grid"] == grid and r["strategy"] == name
            )
            style: dict[str, Any] = {"color": colours(i % 20), "linewidth": 1.0, "marker": "."}
            if name == chosen:
                style.update(color="black", linewidth=2.6, marker="o")
            elif name in ("svd-smore-fill", "svd-mean-fill"):
                style.update(linestyle="--", linewidth=1.6)
            elif name.startswith("oracle"):
                # Ceilings that know the scene plan (bench.oracle), not contenders.
                style.update(
                    color="grey",
                    linestyle="-.",
                    linewidth=1.4,
                    marker="x" if name == "oracle-needles" else "+",
                )
            elif not name.startswith("svd"):
                style.update(linestyle=":", linewidth=1.8)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **style)
            band = sorted(
                (r["fraction"], *r["image"]["fidelity_ci"])
                for r in rows
                if r["grid"] == grid and r["strategy"] == name and "fidelity_ci" in r["image"]
            )
            if band and (name == chosen or name.startswith(("svd-dilution", "svd-ward-context"))):
                # The 95 % interval of the default and of the new merge rule.
                xs, lo, hi = zip(*band, strict=True)
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ticks = sorted({r["fraction"] for r in rows if r["grid"] == grid and r["strategy"] != "dense"})
        ax.set_xticks(ticks, [f"1/{round(1 / f)}" for f in ticks])
        ax.minorticks_off()
        ax.set_title(f"grid {grid}")
        ax.set_xlabel("budget / dense tokens")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("fidelity to dense top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if any(name.startswith("oracle") for name in labels):
        # The oracles cap the scenes one token per anchor can keep, not fidelity to dense (bench.oracle).
        labels = [f"{n} (ceiling on scenes kept)" if n.startswith("oracle") else n for n in labels]
    fig.legend(
        handles, labels, loc="center right", fontsize=7, title="shaded: 95 % interval", title_fontsize=7
    )
    fig.suptitle(f"{title}: image queries", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rep: dict[str, Any], folder: Path) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>-fidelity.png`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    name = rep["name"]
    paths = {
        "json": folder / f"{name}.json",
        "md": folder / f"{name}.md",
        "png": folder / f"{name}-fidelity.png",
    }
    plot(rep["pooled"], paths["png"], title=name, chosen=rep["chosen"])
    rep["files"] = {k: p.name for k, p in paths.items()}
    write_json(paths["json"], rep)
    write_bytes(paths["md"], markdown(rep).encode())
    return paths


def _cmd(args: argparse.Namespace) -> int:
    seeds = args.seeds
    if not seeds:
        raise ConfigError("--seeds names no seed")
    params = haystack.make_params(
        duration=args.duration, fps=args.fps, height=args.height, needles=args.needles, seed=seeds[0]
    )
    rep = run(
        params,
        encoder_from_args(args),
        data=Path(args.data),
        cache=Path(args.cache),
        grids=args.grids,
        fractions=args.fractions,
        strategies=args.strategies,
        command=command_line(args),
        seeds=seeds,
        image_query=args.image_query,
    )
    paths = write(rep, Path(args.out))
    print(json.dumps({"targets": rep["targets"], **{k: str(v) for k, v in paths.items()}}, indent=1))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``compression`` to the ``bench`` subparsers."""
    from agent.cli.options import add_model_options
    from bench.cli import _csv, _fraction

    c = sub.add_parser("compression", help="memory strategies at equal token budgets, image queries")
    c.add_argument("--duration", type=haystack._duration_arg, default=3600.0, help="e.g. 20m, 1h")
    c.add_argument("--fps", type=int, default=2, choices=[2, 3, 4, 5, 25])
    c.add_argument("--height", type=int, default=480, choices=[480, 720])
    c.add_argument("--needles", type=int, default=20)
    c.add_argument(
        "--seeds", type=_csv(int), default="0", help="haystack seeds pooled, e.g. 0,1,2 (20 needles each)"
    )
    c.add_argument("--data", default=str(haystack.DEFAULT_DATA), help="photo folder like ../shared/data")
    c.add_argument("--cache", default=str(haystack.DEFAULT_CACHE), help="build and embedding cache")
    c.add_argument("--out", default=str(DEFAULT_RESULTS))
    c.add_argument(
        "--grids", type=_csv(int, {1, 2, 3, 4}), default="1,2,3,4", help="super-image grids compared"
    )
    default_fractions = ",".join(f"1/{round(1 / f)}" for f in DEFAULT_FRACTIONS)
    c.add_argument(
        "--fractions",
        type=_csv(_fraction),
        default=default_fractions,
        help="budgets as fractions of dense tokens",
    )
    known = set(fidelity.ALL_STRATEGIES) | set(oracle.ORACLES)
    # A misspelt name is a usage error (exit 2) listing the names, not a traceback.
    c.add_argument("--strategies", type=_csv(str, known), default=",".join(DEFAULT_STRATEGIES))
    c.add_argument(
        "--image-query",
        default="still-shot",
        choices=dense_inputs.IMAGE_QUERY_MODES,
        help="image queries as a still shot at each grid (the engine's default) or the photo alone",
    )
    add_model_options(c)
    c.set_defaults(func=_cmd)
