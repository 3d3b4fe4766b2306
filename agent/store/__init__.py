"""Bytes on disk: atomic writes, snapshot generations and quarantine, memory snapshots, the frame store."""
