"""JSON shapes the LLM must produce, as pydantic models.

Each model doubles as the JSON schema sent in ``response_format`` (so a server
with structured outputs cannot emit anything else) and as the validator of what
comes back (so a server without them, or a misbehaving one, is caught).
Validation errors become :class:`~llm_server.errors.BadAnswerError`.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from llm_server.errors import BadAnswerError

MAX_MOMENTS = 10
MAX_EVIDENCE = 8


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnswerMoment(_Shape):
    """One moment as the LLM states it (stream seconds)."""

    start: float = Field(ge=0)
    end: float = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
    evidence: list[float] = Field(default_factory=list, max_length=MAX_EVIDENCE)
    """Timestamps (seconds) of the captions or frames that support the moment."""

    @model_validator(mode="after")
    def _ordered_inside_video(self, info: ValidationInfo) -> AnswerMoment:
        if self.start >= self.end:
            raise ValueError(f"moment start {self.start} is not before end {self.end}")
        duration = (info.context or {}).get("duration")
        if duration is not None and self.end > float(duration) + 1e-6:
            raise ValueError(f"moment [{self.start}, {self.end}] ends after the video ({duration} s)")
        return self


class Answer(_Shape):
    """The answer: moments, best first."""

    moments: list[AnswerMoment] = Field(max_length=MAX_MOMENTS)


class TimeConstraint(_Shape):
    """A temporal qualifier in the query ("after the goal", "in the first minute")."""

    relation: Literal["before", "after", "during", "first", "last", "near"]
    reference: str = Field(default="", max_length=200)
    """The event or span the relation refers to ("the goal", "the video")."""
    seconds: float | None = Field(default=None, ge=0)
    """A duration the query names, if any ("first 60 seconds" -> 60)."""


class QueryUnderstanding(_Shape):
    """Objects, actions and time constraints extracted from a query."""

    objects: list[str] = Field(default_factory=list, max_length=8)
    actions: list[str] = Field(default_factory=list, max_length=8)
    time_constraints: list[TimeConstraint] = Field(default_factory=list, max_length=4)


class PresenceCheck(_Shape):
    """The QA filter's verdict on one frame."""

    present: bool


class Caption(_Shape):
    """One frame caption."""

    caption: str = Field(min_length=1, max_length=400)


Shape = TypeVar("Shape", bound=BaseModel)


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """JSON schema of ``model`` for ``response_format`` (no titles: less grammar, fewer tokens)."""
    return _strip_titles(model.model_json_schema())


def response_format(model: type[BaseModel], json_schema: bool) -> dict[str, Any]:
    """``response_format`` asking for ``model``.

    ``json_schema`` when the server honours it; otherwise JSON mode with the
    schema attached, which llama-cpp-python turns into a grammar and other
    servers ignore (the answer is validated either way).
    """
    schema = schema_of(model)
    if json_schema:
        return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema}}
    return {"type": "json_object", "schema": schema}


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def parse(model: type[Shape], text: str, *, duration: float | None = None) -> Shape:
    """Validate the LLM's text as ``model``; BadAnswerError on anything else.

    Tolerates prose or code fences around one JSON object, which small models
    emit when a server cannot constrain the output.
    """
    payload = _extract_json(text)
    try:
        return model.model_validate(payload, context={"duration": duration})
    except ValidationError as exc:
        raise BadAnswerError(f"LLM answer does not fit {model.__name__}: {exc.errors()[:3]}") from exc


def _extract_json(text: str) -> Any:
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    start, end = stripped.find("{"), stripped.rfind("}")
    if start < 0 or end <= start:
        raise BadAnswerError(f"LLM answer holds no JSON object: {stripped[:200]!r}")
    try:
        return json.loads(stripped[start : end + 1])
    except json.JSONDecodeError as exc:
        raise BadAnswerError(f"LLM answer is not valid JSON: {stripped[:200]!r}") from exc
