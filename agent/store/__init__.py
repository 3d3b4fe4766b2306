"""Bytes on disk: atomic writes, memory snapshots, the frame store."""
