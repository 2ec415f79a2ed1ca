"""``gguf``: export a registered model to a GGUF file for the llama-cpp backend.

Not a compression of the network (the weights keep their shapes) but of how it is served: llama.cpp's
q8_0, q4_0 and f16 kernels run on AVX2 CPUs that have no native bf16, where torch falls back to fp32 and decodes
memory-bound at four bytes a weight. The result is registered like any other stage-3 model (stage
``quantized``, parent = the input model), so evaluation, routing and serving open it by name.
"""

from supertiny.compress.base import CompressContext, Compressor
from supertiny.compress.gguf_config import GGUFConfig
from supertiny.errors import InvalidInputError
from supertiny.runs.algorithm import Produced


class GGUFCompressor(Compressor):
    name = "gguf"
    description = "export to a GGUF file (q8_0, q4_0, f16 or f32) served by llama.cpp (llama-cpp backend)"
    config_class = GGUFConfig
    stage = "quantized"
    data = "none"

    def name_suffix(self, config: GGUFConfig) -> str:  # type: ignore[override]
        reference_scales = config.type == "q4_0" and config.q4_scales == "max"
        return f"gguf-{config.type}-max" if reference_scales else f"gguf-{config.type}"

    def check(self, context: CompressContext) -> None:
        from supertiny.compress.gguf_export import check_exportable

        if context.source_ref.gguf_file:
            raise InvalidInputError(f"model {context.source.name!r} is already a GGUF file",
                                    hint="export a Hugging Face (safetensors) model instead")
        check_exportable(context.source_ref.path)

    def compress(self, context: CompressContext) -> Produced:
        from supertiny.artifacts.hf import set_threads
        from supertiny.compress.gguf_export import copy_companion_files, export_gguf

        config: GGUFConfig = context.config  # type: ignore[assignment]
        set_threads(config.threads)
        context.progress.phase(f"writing {context.name} ({config.type})")
        copied = copy_companion_files(context.source_ref.path, context.output_dir)
        export = export_gguf(context.source_ref.path, context.output_dir / f"{context.output_dir.name}.gguf",
                             config.type, name=context.name, q4_scales=config.q4_scales)
        metrics = {"type": config.type, "q4_scales": config.q4_scales, "tensors": export.tensors,
                   "gguf_bytes": export.size_bytes, "companion_files": copied}
        return Produced(param_count=export.param_count, metrics=metrics, format="gguf", backend="llama-cpp",
                              location=export.path)
