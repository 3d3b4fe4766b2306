"""The JSON text of messages: its shape counted without parsing, in linear time; echoes cut."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.service.json_text import MAX_DEPTH, MAX_ITEMS, clip, id_of, json_shape, load_json

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def items(value: Any) -> int:
    if isinstance(value, list | dict):
        inner = value if isinstance(value, list) else list(value.values())
        return max(len(inner), 1) + sum(map(items, inner))
    return 0


@settings(max_examples=300, deadline=None)
@given(value=values, indent=st.sampled_from([None, 1]))
def test_the_shape_is_the_parsed_values(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)  # strings hold quotes, brackets and backslashes, escaped
    shape = json_shape(text)
    assert shape.depth == depth(value)
    assert shape.items == items(value)


@pytest.mark.timeout(60)
def test_the_shape_of_hostile_text_is_found_in_linear_time() -> None:
    # Each of these took the first regular expression quadratic time: 10 s at 20 000 repeats.
    for unit in ('\\"', '"\\', '"a\\', '["a\\"]'):
        text = unit * 1_000_000
        assert json_shape(text).depth <= 1
    assert json_shape("[" * 1_000_000 + "]" * 1_000_000).depth == 1_000_000


def test_limits_are_typed_errors_and_the_protocol_fits_them() -> None:
    with pytest.raises(ProtocolError, match="nested deeper"):
        load_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(ProtocolError, match="more than"):
        load_json(json.dumps(list(range(MAX_ITEMS + 1))))
    assert len(load_json(json.dumps({"image": "[{," * 100_000}))["image"]) == 300_000  # inside a string
    with pytest.raises(ProtocolError, match="malformed JSON"):
        load_json("{not json")


def test_echoes_are_cut_and_overlong_ids_are_not_read() -> None:
    assert clip("x" * 10) == "x" * 10
    cut = clip("x" * 10_000)
    assert len(cut) == 200 and cut.endswith("…")
    assert id_of({"id": "a" * 200}) == "a" * 200
    assert id_of({"id": "a" * 201}) is None and id_of({"id": 5}) is None and id_of([1]) is None
