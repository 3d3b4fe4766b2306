"""open_clip's CLIP tokenizer without importing torch or open_clip (the serving process's memory).

``open_clip.get_tokenizer`` returns torch tensors, so merely tokenising a query
imported torch (~480 MB resident) and open_clip (~240 MB more: torchvision,
timm) into a process whose forward passes run on OpenVINO. :class:`ClipTokenizer`
gives the same ids as open_clip's ``SimpleTokenizer`` as an int64 numpy array:

- cleaning as open_clip's ``lower`` mode: ``ftfy.fix_text``, HTML unescaped
  twice, whitespace runs joined by one space, Python's ``str.lower``;
- splitting with open_clip's own pattern through the ``regex`` module (the
  module open_clip uses: its Unicode classes and case folding, not Oniguruma's,
  decide where words end);
- byte-level BPE with ``</w>`` ending each word, by the Hugging Face
  ``tokenizers`` library (Rust, cached), built from the vocabulary file
  open_clip ships (found without importing it) as transformers' ``CLIPConverter``
  builds ``CLIPTokenizerFast``;
- ``<start_of_text>`` ... ``<end_of_text>`` in ``context_length`` slots, zero
  padded; a longer text is cut with ``<end_of_text>`` kept last.

Only models that open_clip tokenizes with the default ``SimpleTokenizer`` get
this one (:func:`fast_tokenizer_applies`: MobileCLIP2-S0 and ViT-B-32 among
them); any other (a Hugging Face or SigLIP tokenizer, tokenizer options) keeps
open_clip's own, which imports torch.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import ftfy
import numpy as np
import regex

SOT = "<start_of_text>"
EOT = "<end_of_text>"
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# open_clip keeps the first 49152 - 256 - 2 merges of the file (its first line is a header).
_MERGES = 49152 - 256 - 2
_PATTERN = regex.compile(
    rf"{SOT}|{EOT}" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def open_clip_dir() -> Path | None:
    """The installed open_clip package folder, found without importing it; None when absent."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def fast_tokenizer_applies(model: str) -> bool:
    """Whether open_clip tokenizes ``model`` with a plain ``SimpleTokenizer`` (then :class:`ClipTokenizer` matches it).

    Read from the model's built-in config (``model_configs/<model>.json``) as
    ``open_clip.get_tokenizer`` reads it: no ``hf_tokenizer_name``, no
    ``tokenizer_kwargs``, not a SigLIP name, no ``hf-hub:``/``local-dir:`` schema.
    """
    return _simple_text_cfg(model) is not None


def _simple_text_cfg(model: str) -> dict[str, object] | None:
    """``model``'s ``text_cfg`` when :func:`fast_tokenizer_applies`, else None."""
    root = open_clip_dir()
    if root is None or ":" in model or "siglip" in model.lower() or not (root / _VOCAB_FILE).is_file():
        return None
    try:
        config = json.loads((root / "model_configs" / f"{model}.json").read_text())
        text_cfg = dict(config.get("text_cfg") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if "hf_tokenizer_name" in text_cfg or text_cfg.get("tokenizer_kwargs"):
        return None
    return text_cfg


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clean(text: str) -> str:
    """open_clip's ``lower`` cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """open_clip's ``SimpleTokenizer`` ids from ``tokenizers`` (see the module docstring).

    ``tokenizer(texts)`` -> (len(texts), context_length) int64. A lone UTF-16
    surrogate becomes U+FFFD (ftfy's cleaning, as in open_clip); the service
    refuses such a query before it gets here (``bad_query``).
    """

    def __init__(self, vocab_file: Path, context_length: int = 77) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        lines = gzip.decompress(vocab_file.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
        alphabet = list(bytes_to_unicode().values())
        tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges), SOT, EOT]
        vocab = {token: i for i, token in enumerate(tokens)}
        bpe = models.BPE(
            vocab=vocab,
            merges=[(a, b) for a, b in merges],
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
        self._bpe = Tokenizer(bpe)
        # Words arrive split already (by open_clip's pattern): only bytes -> characters here.
        self._bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self.sot_token_id = vocab[SOT]
        self.eot_token_id = vocab[EOT]
        self.vocab_size = len(vocab)
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text`` without start/end tokens."""
        ids: list[int] = []
        words: list[str] = []
        for word in _PATTERN.findall(clean(text)):
            if word in (SOT, EOT):  # open_clip maps a literal special token to its id
                ids += self._words(words)
                words = []
                ids.append(self.sot_token_id if word == SOT else self.eot_token_id)
            else:
                words.append(word)
        return ids + self._words(words)

    def _words(self, words: list[str]) -> list[int]:
        if not words:
            return []
        return list(self._bpe.encode(words, is_pretokenized=True, add_special_tokens=False).ids)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(n, context_length) int64 ids: start, BPE ids, end, zeros; cut to fit with the end id kept last."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


def for_model(model: str) -> ClipTokenizer | None:
    """The shared :class:`ClipTokenizer` when it tokenizes ``model`` as open_clip does, else None."""
    text_cfg = _simple_text_cfg(model)
    if text_cfg is None:
        return None
    return clip_tokenizer(int(str(text_cfg.get("context_length", 77))))


@cache
def clip_tokenizer(context_length: int = 77) -> ClipTokenizer:
    """The shared :class:`ClipTokenizer` over open_clip's vocabulary file (built once: ~0.3 s).

    Raises ``FileNotFoundError`` when open_clip (and with it the file) is not installed.
    """
    root = open_clip_dir()
    if root is None:
        raise FileNotFoundError(f"open_clip is not installed: no {_VOCAB_FILE}")
    return ClipTokenizer(root / _VOCAB_FILE, context_length)
