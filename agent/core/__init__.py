"""Numeric core: memory, SVD, super-images, cheap index, proposals, metrics. No I/O, no asyncio."""
