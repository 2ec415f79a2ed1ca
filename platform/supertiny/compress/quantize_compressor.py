"""``quantize``: weight-only int8 (or int4) quantization for CPU serving, or W8A8 int8 for a vLLM engine.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth: int8 weights
halve the bytes read per token against bf16. The kernels are torch's own packed-weight CPU kernels
(``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), so nothing beyond torch is needed; the
modules are in :mod:`supertiny.compress.quantized`, the format in :mod:`supertiny.compress.quantized_io`.

Why not ``torch.ao.quantization.quantize_dynamic`` (fbgemm int8 activations and weights): on the
2-core x86 machine it prefilled much faster but decoded slower than weight-only int8, needs fp32
activations everywhere else, agreed less with the bf16 model's greedy tokens (per-tensor activation
quantization meets Qwen's activation outliers), and torch has deprecated it. int4 (group-wise) is a third
of bf16's bytes and decoded as fast as int8 on a quiet core and faster when memory bandwidth was contended,
but it moves the logits much more (``python -m bench.compress`` measures it; the metrics of every run
compare the logits on a probe prompt before and after).

W8A8 (``--scheme w8a8``) is for the engine: vLLM's CPU build loads a compressed-tensors W8A8 checkpoint
(:mod:`supertiny.compress.compressed_tensors_io`) and multiplies int8 activations by int8 weights with oneDNN,
which a batch of sequences decodes through far faster than torch in-process. Its probe runs the activations'
per-token rounding as the engine does.
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from supertiny.compress.base import CompressContext, Compressor
from supertiny.compress.quantize_config import QuantizeConfig
from supertiny.runs.algorithm import Produced

PROBE = [{"role": "system", "content": "You are a helpful assistant that calls tools."},
         {"role": "user", "content": "What is the weather in Paris today, in celsius? Use the tool."}]


class QuantizeCompressor(Compressor):
    name = "quantize"
    description = ("weight-only int8 / int4 quantization for CPU serving (transformers-quantized backend), or W8A8 "
                   "int8 for a vLLM engine")
    config_class = QuantizeConfig
    stage = "quantized"
    data = "none"

    def name_suffix(self, config: QuantizeConfig) -> str:  # type: ignore[override]
        return f"{config.scheme}-g{config.group_size}" if config.scheme == "int4" else config.scheme

    def compress(self, context: CompressContext) -> Produced:
        import torch

        from supertiny.artifacts.hf import load_model, load_tokenizer, set_threads
        from supertiny.compress.compressed_tensors_io import FORMAT, save_w8a8
        from supertiny.compress.quantized import quantize_modules
        from supertiny.compress.quantized_io import save_quantized

        config: QuantizeConfig = context.config  # type: ignore[assignment]
        set_threads(config.threads)
        started = time.perf_counter()
        context.progress.phase(f"loading {context.source_ref.name}")
        tokenizer = load_tokenizer(context.source_ref)
        model = load_model(context.source_ref, config.compute_dtype, trainable=False)
        params = sum(parameter.numel() for parameter in model.parameters())
        probe = _probe_ids(tokenizer)
        with torch.inference_mode():
            reference = model(input_ids=probe).logits[0].float()
        context.progress.phase(f"quantizing to {config.scheme}")
        w8a8 = config.scheme == "w8a8"
        head = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
        # W8A8 leaves the embedding and the head alone, as vLLM's int8 path does
        manifest = quantize_modules(model, "int8" if w8a8 else config.scheme, getattr(torch, config.compute_dtype),
                                    group_size=config.group_size, skip=config.skipped + ((head,) if w8a8 else ()),
                                    quantize_embedding=not w8a8)
        with torch.inference_mode(), _rounded_activations(model, w8a8):
            logits = model(input_ids=probe).logits[0].float()
        context.progress.phase(f"saving {context.name}")
        if w8a8:
            save_w8a8(model, tokenizer, manifest, context.output_dir, config.compute_dtype)
        else:
            save_quantized(model, tokenizer, manifest, context.output_dir, config.compute_dtype)
        agreement = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        metrics: dict[str, Any] = {
            "scheme": config.scheme, "group_size": config.group_size if config.scheme == "int4" else None,
            "compute_dtype": config.compute_dtype, "int8_layers": len(manifest["int8"]),
            "int4_layers": len(manifest["int4"]), "tied_head": manifest["tied_head"],
            "probe_tokens": int(probe.shape[1]), "probe_top1_agreement": round(agreement, 4),
            "probe_logit_cosine": round(float(torch.nn.functional.cosine_similarity(
                logits.flatten(), reference.flatten(), dim=0)), 5),
            "probe_max_abs_logit_diff": round(float((logits - reference).abs().max()), 4),
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
        return Produced(param_count=params, metrics=metrics, format=FORMAT if w8a8 else "quantized",
                        backend="transformers-quantized")


@contextlib.contextmanager
def _rounded_activations(model: Any, enabled: bool) -> Iterator[None]:
    """With ``enabled``, every int8 layer's input rounded to int8 per token (absmax / 127), as the engine's W8A8
    kernel quantizes it."""
    from supertiny.compress.quantized import Int8Linear

    def round_input(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        scale = (x.float().abs().amax(dim=-1, keepdim=True) / 127.0).clamp(min=1e-8)
        return ((x.float() / scale).round().clamp(-127, 127) * scale).to(x.dtype), *args[1:]

    handles = [module.register_forward_pre_hook(round_input) for module in model.modules()
               if enabled and isinstance(module, Int8Linear)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _probe_ids(tokenizer: Any) -> Any:
    """A short chat prompt to compare the logits before and after quantization."""
    import torch

    text = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)
