"""Built-in inference backends: local transformers, OpenAI-compatible endpoints, in-process vLLM and llama.cpp."""

import supertiny
from supertiny.models.llamacpp_backend import LlamaCppBackend
from supertiny.models.openai_backend import OpenAIBackend
from supertiny.models.transformers_backend import TransformersBackend
from supertiny.models.vllm_backend import VLLMBackend


@supertiny.hookimpl(trylast=True)
def register_backends(register):
    register(TransformersBackend())
    register(OpenAIBackend())
    register(VLLMBackend())
    register(LlamaCppBackend())
