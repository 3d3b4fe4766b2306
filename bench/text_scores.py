"""Scoring of the text-channel benchmark: rank a query through a channel and ``fuse``, IoU against the truth.

Used by :mod:`bench.text_channels` on live channels, and by its ``--rescore``
mode on the spans a previous run recorded (the same search, no ASR or OCR).

Metrics of one query (one truth span): ``r1_05`` / ``r1_07`` (the top
moment's temporal IoU with the truth reaches 0.5 / 0.7) and ``ap`` (average
precision at IoU 0.5: one truth, so 1 / rank of the first hit, 0 if none in
the top 5). Tables average them over any attribute of the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from agent.channels.base import ChannelAnswer, ChannelQuery
from agent.channels.text_search import SENTENCE_ROLE, TextSearch, TimedText
from agent.core.fuse import fuse
from agent.models.sentences import SentenceEncoder

KINDS = ("exact", "paraphrase", "question")
METRICS = ("r1_05", "r1_07", "ap")


class Searchable(Protocol):
    name: str

    def search(self, query: ChannelQuery) -> ChannelAnswer: ...


class Recorded:
    """A channel stand-in over recorded spans: the current :class:`TextSearch`, nothing ingested."""

    def __init__(self, name: str, spans: Sequence[TimedText], sentences: SentenceEncoder) -> None:
        self.name = name
        self.spans = list(spans)
        self._search = TextSearch(sentences.encode)

    def search(self, query: ChannelQuery) -> ChannelAnswer:
        return self._search.answer(self.spans, query, stream="s", channel=self.name)


def timed(rows: Sequence[Sequence[Any]]) -> list[TimedText]:
    """Recorded ``[start, end, text, words?]`` rows back into spans (words: ``[[start, end, word], ...]``)."""
    out = []
    for row in rows:
        words = tuple((float(w[0]), float(w[1]), str(w[2])) for w in (row[3] if len(row) > 3 else []))
        out.append(TimedText(float(row[0]), float(row[1]), str(row[2]), words))
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def rank(
    channel: Searchable, text: str, sentences: SentenceEncoder, top_k: int = 5
) -> list[tuple[float, float]]:
    """The fused moments' (start, end) for ``text``, best first (what ``vmr query`` would rank)."""
    q = ChannelQuery(vectors={SENTENCE_ROLE: sentences.encode([text])[0]}, text=text, top_k=top_k)
    answer = channel.search(q)
    cals = {("s", channel.name, k): c for k, c in answer.calibrations.items()}
    fused = fuse(answer.proposals, cals, top_k=top_k)
    return [(m.start, m.end) for m in fused.moments]


def score(ranked: Sequence[tuple[float, float]], truth: Sequence[float]) -> dict[str, float]:
    """The three metrics of one ranked answer (module docstring)."""
    top = ranked[0] if ranked else (0.0, 0.0)
    hit = next((i for i, m in enumerate(ranked) if iou(m, truth) >= 0.5), None)
    return {
        "r1_05": float(iou(top, truth) >= 0.5),
        "r1_07": float(iou(top, truth) >= 0.7),
        "ap": 0.0 if hit is None else 1.0 / (hit + 1),
    }


def query_rows(
    channel: Searchable, needles: Sequence[dict[str, Any]], sentences: SentenceEncoder
) -> list[dict[str, Any]]:
    """One row per (needle, kind): the needle's attributes, the kind, the query, the metrics and the top moment.

    ``needles``: dicts with ``queries`` (exact, paraphrase, question), ``truth``
    [start, end] and any attributes (voice, font...) copied into the rows.
    """
    rows = []
    for needle in needles:
        attrs = {k: v for k, v in needle.items() if k != "queries"}
        for kind, text in zip(KINDS, needle["queries"], strict=True):
            ranked = rank(channel, text, sentences)
            top = [round(x, 2) for x in ranked[0]] if ranked else None
            rows.append({**attrs, "kind": kind, "query": text, **score(ranked, needle["truth"]), "top": top})
    return rows


def table(rows: Sequence[dict[str, Any]], by: str | None = None) -> dict[str, Any]:
    """Mean metrics per kind, or per value of ``by`` then kind (with ``n`` queries per cell)."""
    if by is not None:
        values = sorted({str(r[by]) for r in rows})
        return {v: table([r for r in rows if str(r[by]) == v]) for v in values}
    out: dict[str, Any] = {}
    for kind in KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            out[kind] = {m: round(float(np.mean([r[m] for r in sel])), 3) for m in METRICS} | {"n": len(sel)}
    return out


def misses(rows: Sequence[dict[str, Any]], heard: dict[Any, Any] | None = None) -> list[dict[str, Any]]:
    """The rows whose top moment missed (IoU < 0.5), with what the channel held at the truth if ``heard`` maps
    span starts to text (the transcript or OCR read that should have matched)."""
    out = []
    for r in rows:
        if r["r1_05"]:
            continue
        m: dict[str, Any] = {k: r[k] for k in ("kind", "query", "truth", "top") if k in r}
        if heard is not None:
            m["held_at_truth"] = [t for s, t in heard.items() if r["truth"][0] - 2.0 <= s <= r["truth"][1]]
        out.append(m)
    return out


def markdown(result: dict[str, Any]) -> str:
    """Short tables: R1@0.5 / R1@0.7 / mAP per split, channel, SNR and kind; R1@0.5 per needle attribute."""
    lines = [f"Command: `{result['command']}`", ""]
    if "rescored_by" in result:
        lines += [f"Search re-run on the recorded spans: `{result['rescored_by']}`", ""]
    lines += [f"Size: {result['size']}", ""]
    lines += [
        "| split | channel | SNR | kind | n | R1@0.5 | R1@0.7 | mAP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, parts in result["splits"].items():
        cells = [("speech", c, r["by_kind"]) for c, r in parts.get("speech", {}).items()]
        cells += [("on-screen", "-", parts["ocr"]["by_kind"])] if parts.get("ocr") else []
        for channel, cond, by_kind in cells:
            for kind, m in by_kind.items():
                lines.append(
                    f"| {split} | {channel} | {cond.removeprefix('snr_')} | {kind} | {m['n']} "
                    f"| {m['r1_05']} | {m['r1_07']} | {m['ap']} |"
                )
    lines += ["", "R1@0.5 (exact / paraphrase / question) per needle attribute:", ""]
    lines += [
        "| split | channel | SNR | attribute | value | n per kind | R1@0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, parts in result["splits"].items():
        groups: list[tuple[str, Any, tuple[str, ...]]] = [
            (c, r, ("voice", "speed")) for c, r in parts.get("speech", {}).items()
        ]
        groups += (
            [("-", parts["ocr"], ("font", "size", "motion", "occluded", "sign"))] if parts.get("ocr") else []
        )
        for cond, r, attrs in groups:
            channel = "on-screen" if cond == "-" else "speech"
            for attr in attrs:
                for value, by_kind in r[f"by_{attr}"].items():
                    r1 = " / ".join(str(m["r1_05"]) for m in by_kind.values())
                    n = next(iter(by_kind.values()))["n"]
                    lines.append(
                        f"| {split} | {channel} | {cond.removeprefix('snr_')} | {attr} | {value} | {n} | {r1} |"
                    )
    return "\n".join(lines) + "\n"
