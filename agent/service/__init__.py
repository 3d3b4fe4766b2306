"""The live service, split as vLLM's OpenAI server is (router / protocol / serving).

Bottom up: :mod:`~agent.service.config` (ServiceConfig, StreamSpec),
:mod:`~agent.service.answer` (QueryAnswer, the one result model),
:mod:`~agent.service.protocol` (every request and event as a model, one codec),
:mod:`~agent.service.batch_worker` (fair cross-stream batching, failure path),
:mod:`~agent.service.stream_runner` (one stream's task),
:mod:`~agent.service.watch` (standing queries), :mod:`~agent.service.llm_handoff` (the LLM stage),
:mod:`~agent.service.shard` (the StreamShard seam) and
:mod:`~agent.service.local_shard` (the in-process shard),
:mod:`~agent.service.registry` (persisted stream list, snapshot loop),
:mod:`~agent.service.metrics` (prometheus_client), :mod:`~agent.service.serving`
(the façade), :mod:`~agent.service.errors` (the error mapper),
:mod:`~agent.service.connection` (one client), :mod:`~agent.service.router`
(routes, dispatch table), :mod:`~agent.service.server` (listening),
:mod:`~agent.service.pipeline` (Service: everything started and closed together),
:mod:`~agent.service.client` (websockets client).
"""
