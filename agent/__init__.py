"""vmr core: bounded video memory, super-image prescreen, moment retrieval."""

from __future__ import annotations

from agent.errors import VmrError
from agent.types import Coverage, Frame, Moment, QueryResult

__all__ = ["Coverage", "Frame", "Moment", "QueryResult", "VmrError"]
__version__ = "0.1.0"
