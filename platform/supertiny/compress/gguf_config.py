"""Options of ``supertiny compress gguf``."""

import dataclasses

from supertiny.compress.compress_config import CompressConfig
from supertiny.compress.gguf_export import OUT_TYPES
from supertiny.compress.q4_scales import SCALE_CHOICES, check_q4_scales
from supertiny.errors import InvalidInputError
from supertiny.options import option


@dataclasses.dataclass
class GGUFConfig(CompressConfig):
    """Export to one GGUF file served by llama.cpp (the llama-cpp backend, `pip install supertiny[llamacpp]`):
    on an AVX2 CPU without native bf16 it decodes several times faster than torch fp32. The 2-D weights are
    written in --type; norms and biases stay f32; the tokenizer and chat template are copied next to the file."""

    type: str = option("q8_0", "Weight type: q8_0 (a quarter of fp32's bytes, near-lossless), q4_0 (about an "
                       "eighth, lossy; the output head stays q8_0), f16, or f32 (exact).", choices=OUT_TYPES)
    q4_scales: str = option("search", "How q4_0 blocks are scaled: search (each block's scale is chosen for the "
                            "least squared error) or max (llama.cpp's reference: the largest weight is exact).",
                            choices=SCALE_CHOICES)

    def validate(self) -> None:
        super().validate()
        if self.type not in OUT_TYPES:
            raise InvalidInputError(f"unknown GGUF type {self.type!r}", hint=f"one of {', '.join(OUT_TYPES)}")
        check_q4_scales(self.q4_scales)
