"""The OpenAI-compatible server: FastAPI app, request log writer, API keys, metrics."""
