"""Write a benchmark report: JSON (every figure), a Markdown summary and PNG plots.

Plots use matplotlib's Agg backend (no display needed): fidelity against budget for every
strategy (one panel per super-image grid), and RSS / memory tokens against hours of footage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.store.atomic import write_bytes, write_json


def write(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and the plots into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    name = report["name"]
    paths: dict[str, Path] = {"json": folder / f"{name}.json", "md": folder / f"{name}.md"}
    rows = report.get("strategies", {}).get("rows", [])
    if rows:
        paths["fidelity_png"] = folder / f"{name}-fidelity.png"
        plot_fidelity(rows, paths["fidelity_png"], title=name)
    marks = _marks(report)
    if marks:
        paths["hours_png"] = folder / f"{name}-hours.png"
        plot_hours(marks, paths["hours_png"], title=name, budget=_budget(report))
    report["files"] = {k: p.name for k, p in paths.items()}
    write_json(paths["json"], report)
    write_bytes(paths["md"], markdown(report).encode())
    return paths


def _marks(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    ingest = report.get("speed", {}).get("ingest", {})
    return {mode: res["marks"] for mode, res in ingest.items() if len(res.get("marks", [])) >= 1}


def _budget(report: dict[str, Any]) -> int | None:
    budgets = {res.get("budget") for res in report.get("speed", {}).get("ingest", {}).values()}
    return budgets.pop() if len(budgets) == 1 else None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fidelity(rows: Sequence[dict[str, Any]], path: Path, *, title: str) -> None:
    """Image-query fidelity (%) against budget / dense tokens, one line per strategy and panel per grid."""
    plt = _pyplot()
    grids = sorted({r["grid"] for r in rows})
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 3.6), squeeze=False, sharey=True)
    for ax, grid in zip(axes[0], grids, strict=True):
        sub = [r for r in rows if r["grid"] == grid and r["strategy"] != "dense"]
        for name in dict.fromkeys(r["strategy"] for r in sub):
            pts = sorted((r["fraction"], r["image"]["fidelity"]) for r in sub if r["strategy"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_title(f"grid {grid}")
        ax.set_xlabel("budget / dense tokens")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("fidelity to dense top-1 (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{title}: image queries", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hours(
    marks: dict[str, list[dict[str, Any]]], path: Path, *, title: str, budget: int | None = None
) -> None:
    """Peak RSS and memory tokens at each hour mark, one line per ingest pass."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode, rows in marks.items():
        hours = [r["hours"] for r in rows]
        ax1.plot(hours, [r.get("peak_rss_mb", float("nan")) for r in rows], marker="o", label=f"{mode} peak")
        ax1.plot(
            hours, [r.get("rss_mb", float("nan")) for r in rows], ls="--", marker=".", label=f"{mode} now"
        )
        ax2.plot(hours, [r["tokens"] for r in rows], marker="o", label=mode)
    most = max(r["tokens"] for rows in marks.values() for r in rows)
    if budget is not None and budget <= 2 * most:  # a far-away budget line would flatten the curves
        ax2.axhline(budget, ls=":", color="gray", label=f"budget {budget}")
    ax1.set_xlabel("hours of footage")
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax2.set_xlabel("hours of footage")
    ax2.set_ylabel("memory tokens")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return [*out, ""]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    """The human summary of one report (figures only; the JSON has everything)."""
    m, hs, enc = report["machine"], report["haystack"], report["encoder"]
    p = hs["params"]
    lines = [
        f"# {report['name']}",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM; load average at start "
        f"{m['loadavg_start']}, at end {m.get('loadavg_end')}. Commit {report['git']['commit']}"
        f"{' (dirty tree)' if report['git']['dirty'] else ''}.",
        "",
        f"Haystack: {p['duration'] / 3600:g} h, {p['height']}p, {p['fps']} fps (sampled at "
        f"{hs.get('sample_fps', p['fps'])} fps), {p['needles']} needles, seed {p['seed']}. Encoder `{enc['name']}`"
        + (" — random weights: text-query figures are meaningless." if enc["meaningless"] else "."),
        "",
    ]
    lines += _speed_md(report.get("speed", {}), p["duration"])
    if "strategies" in report:
        lines += _strategies_md(report["strategies"])
    for key, label in (
        ("fidelity_png", "Fidelity against budget"),
        ("hours_png", "RSS and tokens against hours"),
    ):
        if key in report.get("files", {}):
            lines += [f"![{label}]({report['files'][key]})", ""]
    return "\n".join(lines)


def _speed_md(speed: dict[str, Any], duration: float) -> list[str]:
    lines: list[str] = []
    dec = speed.get("decode_only", {})
    if dec:
        lines += ["## Decode only", ""]
        lines += _table(
            ["mode", "seconds", "frames", "x realtime"],
            [[k, v["seconds"], v["frames"], v["x_realtime"]] for k, v in dec.items()],
        )
    ing = speed.get("ingest", {})
    if ing:
        lines += ["## Ingest (VideoIndex)", ""]
        lines += _table(
            [
                "pass",
                "seconds",
                "x realtime",
                "vs decode-only",
                "encoder passes/h",
                "tokens",
                "budget",
                "memory KiB",
            ],
            [
                [
                    k,
                    v["seconds"],
                    v["x_realtime"],
                    v.get("speed_ratio_to_decode_only", "-"),
                    v["encoder_passes_per_hour"],
                    v["tokens"],
                    v["budget"],
                    round(v["memory_bytes"] / 1024, 1),
                ]
                for k, v in ing.items()
            ],
        )
        lines += ["### At each length", ""]
        rows = []
        for k, v in ing.items():
            for r in v["marks"]:
                lat_p, lat_r = r.get("latency_prescreen", {}), r.get("latency_refine", {})
                rows.append(
                    [
                        k,
                        r["hours"],
                        r["tokens"],
                        round(r["memory_bytes"] / 1024, 1),
                        r.get("rss_mb", "-"),
                        r.get("peak_rss_mb", "-"),
                        lat_p.get("p50_ms", "-"),
                        lat_p.get("p95_ms", "-"),
                        lat_r.get("p50_ms", "-"),
                        lat_r.get("p95_ms", "-"),
                    ]
                )
        lines += _table(
            [
                "pass",
                "hours",
                "tokens",
                "memory KiB",
                "RSS MiB",
                "peak RSS MiB",
                "prescreen p50 ms",
                "prescreen p95 ms",
                "refine p50 ms",
                "refine p95 ms",
            ],
            rows,
        )
        for k, v in ing.items():
            for mode, met in v.get("engine_image_metrics", {}).items():
                lines.append(f"- Engine ({k} pass, {mode}) on image queries: {met}")
        lines.append("")
    return lines


def _hits(m: dict[str, Any]) -> str:
    f = m.get("fidelity_on_dense_hits")
    return "-" if f is None else f"{f:.1f} (n={m.get('dense_hits')})"


def _strategies_md(st: dict[str, Any]) -> list[str]:
    lines = [
        "## Strategies at an equal token budget",
        "",
        f"Dense items per grid: {st['items']}; queries: {st['queries']}. Fidelity = share of queries whose "
        "top-1 overlaps the dense top-1 (same grid) at IoU >= 0.5; on dense hits = the same over the queries "
        "dense answers right (n of them).",
        "",
    ]
    head = [
        "grid",
        "strategy",
        "budget/dense",
        "budget",
        "tokens",
        "R1@0.5",
        "R1@0.7",
        "mAP",
        "mIoU",
        "fidelity",
        "fidelity on dense hits",
    ]
    for kind in ("image", "text"):
        note = " (meaningless: random weights)" if kind == "text" and st["text_meaningless"] else ""
        lines += [f"### {kind} queries{note}", ""]
        lines += _table(
            head,
            [
                [
                    r["grid"],
                    r["strategy"],
                    f"1/{round(1 / r['fraction'])}" if r["fraction"] < 1 else "1",
                    r["budget"],
                    r["tokens"],
                    r[kind]["R1@0.5"],
                    r[kind]["R1@0.7"],
                    r[kind]["mAP"],
                    r[kind]["mIoU"],
                    r[kind]["fidelity"],
                    _hits(r[kind]),
                ]
                for r in st["rows"]
            ],
        )
    return lines
