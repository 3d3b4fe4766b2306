"""The torch-free CLIP tokenizer gives open_clip's ids on real captions, odd Unicode and overlong text."""

from __future__ import annotations

import json
import random

import numpy as np
import open_clip
import pytest

from agent.models.clip_tokenizer import ClipTokenizer, clip_tokenizer, fast_tokenizer_applies, for_model
from agent.models.weights import load_tokenizer
from tests.videos import DATA

_ODD = [
    "",
    "   ",
    "\t\n",
    "Café naïve résumé Ångström Øre ß İstanbul ǅ ΣΑΣ ς",
    "東京タワーの夜景 北京 서울 の",
    "🐶🐶 🏳️‍🌈 👍🏽 a🐈b",
    "ｆｏｒｋｌｉｆｔ ＡＢＣ １２３",
    "&amp;lt;b&amp;gt; &quot;quoted&quot; &#39;x&#39; &nbsp;&copy; &unknown;",
    "!!!???...;;;,,,---___***",
    "... -- !? (a) [b] {c} <d> 'e' \"f\"",
    "x<<start_of_text>y <end_of_text> <START_OF_TEXT>",
    "don't we'll I'M they'RE you'd it's",
    "3.14159 1,000,000 12:30pm 2nd 1e-9",
    "\u200bzero\u00a0nb\u3000wide\u2028line\u0085nel",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﬁ ﬂ Ⅻ ½ ²",
    "Ã©tÃ© mojibake â€œquotesâ€\x9d",
    "aaaa aaaaaaaa zzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    "e\u0301 combining a\u0308 o\u0302",
    "مرحبا שלום नमस्ते สวัสดี",
]


def _corpus() -> list[str]:
    """>= 1,000 strings: COCO and QVHighlights captions, odd Unicode, HTML, punctuation, overlong text."""
    texts: list[str] = []
    for line in (DATA / "coco" / "captions.jsonl").read_text().splitlines():
        texts += json.loads(line)["captions"]
    for line in (DATA / "qvhighlights" / "highlight_val_release.jsonl").read_text().splitlines()[:400]:
        texts.append(json.loads(line)["query"])
    rng = random.Random(7)
    words = " ".join(texts).split()
    texts += [" ".join(rng.choice(words) for _ in range(500)) for _ in range(5)]  # truncated at 77
    texts += ["word " * 75, "word " * 76, "word " * 77]  # around the cut
    pieces = _ODD + words[:200]
    texts += [
        "".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n"]) for _ in range(6)) for _ in range(200)
    ]
    return texts + _ODD


@pytest.fixture(scope="module")
def reference() -> object:
    return open_clip.get_tokenizer("ViT-B-32")


def test_ids_equal_open_clip_on_a_thousand_strings(reference: object) -> None:
    texts = _corpus()
    assert len(texts) >= 1000 and DATA.is_dir()
    ours = clip_tokenizer()(texts)
    theirs = reference(texts).numpy()  # type: ignore[operator]
    assert ours.dtype == np.int64 and ours.shape == theirs.shape == (len(texts), 77)
    differ = [texts[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert not differ, differ[:5]
    assert (ours[:, -1] == clip_tokenizer().eot_token_id).any()  # some were cut, the end token kept last


def test_lone_surrogates_read_as_open_clip_reads_them(reference: object) -> None:
    """ftfy turns a lone surrogate into U+FFFD in both (the service refuses such queries before: bad_query)."""
    texts = ["bad \ud800 text", "\udc00", "a\ud83d\ude00b", "\ud83d"]
    assert (clip_tokenizer()(texts) == reference(texts).numpy()).all()  # type: ignore[operator]


def test_the_default_models_use_it_and_others_keep_open_clips() -> None:
    assert fast_tokenizer_applies("MobileCLIP2-S0") and fast_tokenizer_applies("ViT-B-32")
    assert isinstance(for_model("MobileCLIP2-S0"), ClipTokenizer)
    assert isinstance(load_tokenizer("ViT-B-32"), ClipTokenizer)
    # A Hugging Face or SigLIP tokenizer, or an unknown name: open_clip's own decides.
    for name in ("ViT-B-16-SigLIP", "hf-hub:org/model", "no-such-model"):
        assert not fast_tokenizer_applies(name) and for_model(name) is None
    hf_named = [
        m for m in open_clip.list_models() if "hf_tokenizer_name" in open_clip.get_model_config(m)["text_cfg"]
    ]
    assert hf_named and not any(fast_tokenizer_applies(m) for m in hf_named)
