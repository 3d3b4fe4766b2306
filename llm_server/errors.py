"""The exception tree of llm_server, a library that knows nothing of its callers.

Every error llm_server raises on purpose derives from :class:`LLMServerError`;
transport errors (httpx), validation errors (pydantic) and OS errors are
translated where they happen (``raise ... from exc``). An application maps
these to its own errors at one boundary (vmr does so in
``agent/service/llm_handoff.py``)::

    LLMServerError                root: the LLM stage or server failed
    ├── ServerUnavailableError    server down, not started, model missing, port taken
    ├── ServerTimeoutError        no answer within the client's time limit
    ├── BadAnswerError            answer malformed, outside the schema, or refused (HTTP 4xx)
    ├── LLMConfigError            invalid options (unknown packaged model, no URL)
    ├── PromptBudgetError         the prompt does not fit its token budget even trimmed
    └── CaptionStoreError         the caption store on disk cannot be read
"""

from __future__ import annotations


class LLMServerError(Exception):
    """Root of every error llm_server raises on purpose."""


class ServerUnavailableError(LLMServerError):
    """The LLM server is down, not started, lacks its model, or its port is unavailable."""


class ServerTimeoutError(LLMServerError):
    """The LLM server did not answer within the time limit."""


class BadAnswerError(LLMServerError):
    """The server's answer was malformed, outside the schema, or a refusal (HTTP 4xx)."""


class LLMConfigError(LLMServerError):
    """Options that cannot work: an unknown packaged model, a stage without a URL."""


class PromptBudgetError(LLMServerError):
    """Even one candidate without captions does not fit the prompt's token budget."""


class CaptionStoreError(LLMServerError):
    """The caption store file cannot be read."""
