"""The live service: pipeline, shared batch workers, websocket API and HTTP endpoints.

Modules: :mod:`~agent.service.config` (ServiceConfig, StreamSpec),
:mod:`~agent.service.protocol` (websocket messages),
:mod:`~agent.service.batch_worker` (fair cross-stream batching, failure path),
:mod:`~agent.service.stream_runner` (one stream's task),
:mod:`~agent.service.pipeline` (Service), :mod:`~agent.service.watch`
(standing queries), :mod:`~agent.service.server` (aiohttp),
:mod:`~agent.service.client` (websockets client), :mod:`~agent.cli.serve`.
"""
