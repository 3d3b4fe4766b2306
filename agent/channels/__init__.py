"""Per-stream retrieval channels: media in, encoder work out, search into proposals (sans-I/O)."""
