"""Answer and understanding schemas: what is accepted, what is rejected."""

from __future__ import annotations

import json

import pytest

from llm_server.errors import BadAnswerError
from llm_server.protocol import Answer, QueryUnderstanding, parse, response_format, schema_of


def test_valid_answer_parses_with_duration() -> None:
    a = parse(
        Answer, '{"moments": [{"start": 1.5, "end": 4, "confidence": 0.9, "evidence": [2.0]}]}', duration=10
    )
    assert a.moments[0].start == 1.5 and a.moments[0].evidence == [2.0]


@pytest.mark.parametrize(
    "moment",
    [
        {"start": 5, "end": 5, "confidence": 0.5},  # empty
        {"start": 6, "end": 5, "confidence": 0.5},  # reversed
        {"start": -1, "end": 5, "confidence": 0.5},  # before the video
        {"start": 8, "end": 12, "confidence": 0.5},  # after the video
        {"start": 1, "end": 2, "confidence": 1.5},  # confidence out of range
        {"start": 1, "end": 2, "confidence": 0.5, "why": "x"},  # unknown key
        {"start": "a", "end": 2, "confidence": 0.5},
    ],
)
def test_bad_moments_are_rejected(moment: dict[str, object]) -> None:
    with pytest.raises(BadAnswerError):
        parse(Answer, json.dumps({"moments": [moment]}), duration=10)


def test_json_inside_prose_or_fences_is_found() -> None:
    text = 'Sure!\n```json\n{"objects": ["dog"], "actions": ["runs"], "time_constraints": []}\n```'
    u = parse(QueryUnderstanding, text)
    assert u.objects == ["dog"] and u.actions == ["runs"]


@pytest.mark.parametrize("text", ["no json here", "{not json}", '{"moments": 3}'])
def test_garbage_is_rejected(text: str) -> None:
    with pytest.raises(BadAnswerError):
        parse(Answer, text, duration=10)


def test_schema_has_no_titles_and_bounds() -> None:
    schema = schema_of(Answer)

    assert '"title"' not in json.dumps(schema)
    moment = schema["$defs"]["AnswerMoment"]
    assert moment["properties"]["confidence"]["maximum"] == 1
    assert set(moment["required"]) == {"start", "end", "confidence"}


def test_response_format_modes() -> None:
    strict = response_format(Answer, True)
    assert strict["type"] == "json_schema" and strict["json_schema"]["name"] == "Answer"
    loose = response_format(Answer, False)
    assert loose["type"] == "json_object" and loose["schema"] == schema_of(Answer)
