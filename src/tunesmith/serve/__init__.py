"""Serving: a run's fine-tune behind an OpenAI-compatible API, on llama.cpp (default), vLLM or Ollama."""
