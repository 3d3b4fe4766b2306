"""Streams and their state: one stream's channels, clock and snapshot; the index of many streams."""
