"""The ``transformers-quantized`` backend: a model written by ``supertiny compress quantize``, run
in-process exactly like the ``transformers`` backend runs an HF directory (same prompts, stop tokens,
batching, streaming and log-probabilities), with its linear layers on the int8 / int4 CPU kernels. A W8A8
compressed-tensors checkpoint runs its int8 weights there too, its activations unquantized.

Config keys: ``threads``, ``name``, ``max_batch_size``, ``dynamic_batching``, ``batch_window_ms`` (as for
``transformers``); the compute dtype
and the scheme come from the directory's ``quantization.json``. CPU only.
"""

from pathlib import Path
from typing import Any

from supertiny.artifacts.chat_template import load_chat_tokenizer
from supertiny.errors import ModelError
from supertiny.models.backend import backend_config
from supertiny.models.transformers_backend import TransformersBackend, TransformersChatModel, batching_config

CONFIG_KEYS = ("threads", "name", "max_batch_size", "dynamic_batching", "batch_window_ms", "long_prompt_tokens",
               "model_type")


class QuantizedBackend(TransformersBackend):
    name = "transformers-quantized"
    hf_weights = False
    description = ("a model quantized by `supertiny compress quantize` (int8 / int4 weights, or W8A8), run with "
                   "transformers")

    def open(self, location: str, config: dict[str, Any]) -> "QuantizedChatModel":
        return QuantizedChatModel.load(location, config)


class QuantizedChatModel(TransformersChatModel):
    backend = "transformers-quantized"

    @classmethod
    def load(cls, location: str | Path, config: dict[str, Any] | None = None) -> "QuantizedChatModel":
        config = backend_config("transformers-quantized", config, CONFIG_KEYS)
        import torch

        from supertiny.compress.compressed_tensors_io import is_compressed_tensors_dir, load_w8a8
        from supertiny.compress.quantized_io import is_quantized_dir, load_quantized

        path = Path(location).expanduser()
        compressed_tensors = is_compressed_tensors_dir(path)
        if not is_quantized_dir(path) and not compressed_tensors:
            raise ModelError(f"{path} is not a quantized model directory (no quantization.json, no "
                             "compressed-tensors quantization_config in config.json)",
                             hint="make one with `supertiny compress quantize`")
        if config.get("threads"):
            torch.set_num_threads(int(config["threads"]))
        tokenizer = load_chat_tokenizer(path)
        model = load_w8a8(path) if compressed_tensors else load_quantized(path)
        return cls(model, tokenizer, str(config.get("name") or path.name), **batching_config(config))
