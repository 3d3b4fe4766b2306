"""LLM serving (vLLM, llama.cpp), the OpenAI-compatible client and the answer stage.

A leaf library: it imports nothing of ``agent``. Its errors are in
:mod:`llm_server.errors`, its values and the protocols it needs from a caller
(encoder, frame source) in :mod:`llm_server.types`.
"""
