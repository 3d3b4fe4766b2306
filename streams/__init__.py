"""Video sources: each an async iterator of frames with an idempotent close()."""
