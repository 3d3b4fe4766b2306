"""Query understanding: objects, actions and time constraints, as schema-constrained JSON.

The extraction feeds two consumers: prompt ensembling for the CLIP prescreen
(:func:`prompt_variants`) and the caption QA filter. Whether ensembling helps is
a benchmark question (issue #5); callers decide whether to use the variants.
"""

from __future__ import annotations

import re

from llm_server.client import LLMClient
from llm_server.errors import LLMServerError
from llm_server.protocol import QueryUnderstanding, parse, response_format
from llm_server.types import Usage

_SYSTEM = (
    "You extract search terms from a video search query. Objects are visible things "
    "(nouns, with adjectives). Actions are short verb phrases. Time constraints describe "
    "when in the video (before/after/during/first/last/near an event, optionally seconds). "
    "Answer with JSON only."
)
_EXAMPLE_Q = "a dog catches a red frisbee after the kid throws it"
_EXAMPLE_A = (
    '{"objects": ["dog", "red frisbee", "kid"], "actions": ["catches a frisbee", "throws a frisbee"], '
    '"time_constraints": [{"relation": "after", "reference": "the kid throws it", "seconds": null}]}'
)


async def understand(
    client: LLMClient, query: str, *, max_tokens: int = 160
) -> tuple[QueryUnderstanding, Usage]:
    """Ask the LLM to extract objects/actions/time constraints from ``query``.

    Raises LLMServerError subclasses (unavailable, timeout, bad answer); callers that
    can do without fall back to :func:`heuristic_understanding`.
    """
    caps = await client.capabilities()
    messages = [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": _EXAMPLE_Q},
        {"role": "assistant", "content": _EXAMPLE_A},
        {"role": "user", "content": query},
    ]
    out = await client.chat(
        messages,
        max_tokens=max_tokens,
        response_format=response_format(QueryUnderstanding, caps.json_schema),
    )
    return parse(QueryUnderstanding, out.text), out.usage


async def understand_or_heuristic(client: LLMClient | None, query: str) -> QueryUnderstanding:
    """:func:`understand` when an LLM answers, else :func:`heuristic_understanding`."""
    if client is not None:
        try:
            return (await understand(client, query))[0]
        except LLMServerError:
            pass
    return heuristic_understanding(query)


_STOP = frozenset(
    "a an the of in on at to and or with by for from is are was were be being been it its this that "
    "then when while after before during first last".split()
)


def heuristic_understanding(query: str) -> QueryUnderstanding:
    """A no-LLM fallback: content words as objects, nothing else claimed."""
    words = [w for w in re.findall(r"[a-zA-Z][a-zA-Z'-]*", query.lower()) if w not in _STOP]
    return QueryUnderstanding(objects=list(dict.fromkeys(words))[:8])


def prompt_variants(query: str, u: QueryUnderstanding, *, limit: int = 8) -> list[str]:
    """Text variants for CLIP prompt ensembling, the raw query first.

    Objects get the CLIP-style "a photo of ..." template, actions a "someone ..."
    phrasing; duplicates (case-insensitive) are dropped.
    """
    variants = [query.strip()]
    variants += [f"a photo of {_article(o)}" for o in u.objects if o.strip()]
    variants += [f"a video frame of someone {a.strip()}" for a in u.actions if a.strip()]
    if u.objects and u.actions:
        variants.append(f"a photo of {_article(u.objects[0])} {u.actions[0].strip()}")
    seen: set[str] = set()
    unique: list[str] = []
    for v in variants:
        key = v.lower()
        if v and key not in seen:
            seen.add(key)
            unique.append(v)
    return unique[:limit]


def _article(noun: str) -> str:
    noun = noun.strip()
    if noun.lower().startswith(("a ", "an ", "the ")):
        return noun
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun
