"""LLM serving (vLLM, llama.cpp) and the OpenAI-compatible client."""
