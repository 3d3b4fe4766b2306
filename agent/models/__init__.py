"""Encoders: open_clip models, weights loading, batched forward passes."""
