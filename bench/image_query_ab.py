"""Image queries as still shots against the photo alone: two ``vmr bench compression`` runs, paired.

Fidelity cannot compare the two rules: each is measured against its own dense top-1, and the
photo's dense top-1 at grid >= 2 is mostly wrong. What both share is the ground truth, so the
comparison is R1@0.5, query by query on the same haystacks: for every (grid, strategy, budget)
cell present in both runs, the queries one rule answers right and the other not, with an exact
two-sided sign test on those (:func:`bench.pooled.paired` on ``right``).

``python -m bench.image_query_ab STILL.json PHOTO.json --out NAME.md`` (both runs pooled over the
same seeds, ``--image-query still-shot`` and ``--image-query photo``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.store.atomic import write_bytes
from bench import pooled


def _cells(rep: Mapping[str, Any]) -> dict[tuple[int, str, float], Mapping[str, Any]]:
    return {(int(r["grid"]), str(r["strategy"]), round(float(r["fraction"]), 9)): r for r in rep["pooled"]}


def compare(still: Mapping[str, Any], photo: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per cell in both runs: R1@0.5 of each rule, and still shot against photo, paired."""
    if still.get("encoder", {}).get("name") != photo.get("encoder", {}).get("name"):
        raise ValueError("the two runs used different encoders")
    a, b = _cells(still), _cells(photo)
    out = []
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1] != "dense", k[1], -k[2])):
        ra, rb = a[key], b[key]
        out.append(
            {
                "grid": key[0],
                "strategy": key[1],
                "fraction": key[2],
                "still_R1@0.5": ra["image"]["R1@0.5"],
                "photo_R1@0.5": rb["image"]["R1@0.5"],
                "still_fidelity": ra["image"]["fidelity"],
                "photo_fidelity": rb["image"]["fidelity"],
                "paired_right": pooled.paired(ra, rb, field="right"),
            }
        )
    return out


def _budget(fraction: float) -> str:
    return "dense" if fraction >= 1.0 else f"1/{round(1 / fraction)}"


def markdown(rows: Sequence[Mapping[str, Any]], still: Mapping[str, Any], photo: Mapping[str, Any]) -> str:
    """The table: per cell both rules' R1@0.5 and fidelity, and the paired wins / losses / p."""
    lines = [
        f"# Image queries: still shot against the photo alone ({still['encoder']['name']})",
        "",
        f"Still shot: `{still['command']}`",
        "",
        f"Photo: `{photo['command']}`",
        "",
        f"Seeds {still['haystack']['seeds']} pooled, {still['queries']} image queries per cell. "
        "R1@0.5 against the ground truth; fidelity against each rule's own dense top-1 (not comparable "
        "across the rules). Paired: queries the still shot answers right and the photo not (wins), "
        "the reverse (losses), exact two-sided sign test.",
        "",
        "| grid | strategy | budget | R1@0.5 still / photo | fidelity still / photo | wins | losses | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["paired_right"]
        lines.append(
            f"| {r['grid']} | {r['strategy']} | {_budget(r['fraction'])} | "
            f"{r['still_R1@0.5']} / {r['photo_R1@0.5']} | {r['still_fidelity']} / {r['photo_fidelity']} | "
            f"{p['wins']} | {p['losses']} | {p['p']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("still", type=Path, help="compression JSON with --image-query still-shot")
    ap.add_argument("photo", type=Path, help="compression JSON with --image-query photo")
    ap.add_argument("--out", type=Path, required=True, help="markdown file written")
    args = ap.parse_args(argv)
    still, photo = (json.loads(p.read_text()) for p in (args.still, args.photo))
    rows = compare(still, photo)
    write_bytes(args.out, markdown(rows, still, photo).encode())
    write_bytes(args.out.with_suffix(".json"), json.dumps({"rows": rows}, indent=1).encode())
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
