"""Pictures to text lines: Tesseract (Debian's ``tesseract-ocr``) through ``pytesseract``, one blocking call.

:class:`TesseractReader` is the thin shell the ``"ocr"`` batch worker calls
(a thread, never the event loop). Tesseract wants letters about 30 px tall, so
a picture whose short side is under :data:`MIN_SHORT_SIDE` is enlarged first
(Lanczos) and the boxes are scaled back to the picture's pixels. Words are
grouped into Tesseract's lines; a line's confidence is the mean of its words'
(0..100), words Tesseract did not score (-1: layout only) are left out.
The result is a structured array of :data:`LINE_DTYPE`, one row per line.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from agent.errors import ConfigError, VmrError

MIN_SHORT_SIDE = 480
"""Pixels: shorter pictures are enlarged before OCR."""
LINE_CHARS = 160
LINE_DTYPE = np.dtype(
    [
        ("left", "i4"),  # pixels of the picture given, top-left origin
        ("top", "i4"),
        ("width", "i4"),
        ("height", "i4"),
        ("conf", "f4"),  # mean word confidence, 0..100
        ("text", f"U{LINE_CHARS}"),
    ]
)
"""One line of on-screen text with its box and confidence."""


class OcrError(VmrError):
    """Tesseract failed on a picture (the channel retries or drops it)."""


class TesseractReader:
    """Blocking OCR of RGB pictures; thread-safe (each call runs its own Tesseract process)."""

    def __init__(self, language: str = "eng", psm: int = 11, min_short_side: int = MIN_SHORT_SIDE) -> None:
        """``psm`` 11: sparse text, no layout assumed (signs, captions, overlays).

        ``min_short_side``: pixels; shorter pictures are enlarged to it first.
        """
        try:
            import pytesseract
        except ImportError as exc:
            raise ConfigError("pytesseract is not installed: pip install -e '.[speech]'") from exc
        try:
            pytesseract.get_tesseract_version()
        except pytesseract.TesseractNotFoundError as exc:
            raise ConfigError(
                "the tesseract binary is missing: apt-get install tesseract-ocr tesseract-ocr-eng"
            ) from exc
        self._tess = pytesseract
        self.language = language
        self.config = f"--psm {psm}"
        self.min_short_side = min_short_side

    def read(self, image: np.ndarray) -> np.ndarray:
        """Lines of an (H, W, 3) uint8 RGB picture: a (k,) :data:`LINE_DTYPE` array (boxes in its pixels).

        Raises :class:`OcrError` when Tesseract fails.
        """
        pic = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        scale = max(1.0, self.min_short_side / max(1, min(pic.size)))
        if scale > 1.0:
            pic = pic.resize((round(pic.width * scale), round(pic.height * scale)), Image.Resampling.LANCZOS)
        try:
            data = self._tess.image_to_data(
                pic, lang=self.language, config=self.config, output_type=self._tess.Output.DICT
            )
        except (self._tess.TesseractError, RuntimeError, OSError) as exc:
            raise OcrError(f"tesseract failed: {exc}") from exc
        lines: dict[tuple[int, int, int], list[int]] = {}
        for i, word in enumerate(data["text"]):
            if word.strip() and float(data["conf"][i]) >= 0:
                lines.setdefault((data["block_num"][i], data["par_num"][i], data["line_num"][i]), []).append(
                    i
                )
        rows = []
        for idx in lines.values():
            left = min(data["left"][i] for i in idx)
            top = min(data["top"][i] for i in idx)
            right = max(data["left"][i] + data["width"][i] for i in idx)
            bottom = max(data["top"][i] + data["height"][i] for i in idx)
            text = " ".join(data["text"][i].strip() for i in idx)[:LINE_CHARS]
            conf = float(np.mean([float(data["conf"][i]) for i in idx]))
            box = [round(v / scale) for v in (left, top, right - left, bottom - top)]
            rows.append((*box, conf, text))
        return np.array(rows, dtype=LINE_DTYPE)

    def read_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`read` of each picture in order (the batch worker's function)."""
        return [self.read(im) for im in images]
