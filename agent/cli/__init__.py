"""Command-line front: ingest, query, info, eval, serve."""
