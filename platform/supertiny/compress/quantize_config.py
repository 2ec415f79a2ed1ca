"""Options of ``supertiny compress quantize``."""

import dataclasses

from supertiny.compress.compress_config import CompressConfig
from supertiny.errors import InvalidInputError
from supertiny.options import option

WEIGHT_SCHEMES = ("int8", "int4")  # weight-only, on torch's CPU kernels
SCHEMES = (*WEIGHT_SCHEMES, "w8a8")
GROUP_SIZES = (32, 64, 128, 256)
COMPUTE_DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass
class QuantizeConfig(CompressConfig):
    """Quantization for CPU serving. Weight-only int8 (one scale per output channel) or int4 (one scale and zero
    point per group of input weights), computed by torch's packed-weight CPU kernels; the embedding and a tied
    output head share one int8 table. Or W8A8: int8 weights per output channel and int8 activations per token,
    written as a compressed-tensors checkpoint that a vLLM engine serves. All open in-process on the
    transformers-quantized backend."""

    scheme: str = option("int8", "int8: half the bytes of bf16, near-lossless; int4: a third, decodes as fast or "
                         "faster when memory bandwidth is the limit, but lossier; w8a8: int8 weights and activations, "
                         "served by a vLLM engine (`supertiny engine start`), weight-only int8 in-process.",
                         choices=SCHEMES)
    group_size: int = option(128, "int4 only: input weights per scale and zero point (32, 64, 128 or 256).")
    compute_dtype: str = option("bfloat16", "Activations and unquantized weights (norms, biases).",
                                choices=COMPUTE_DTYPES)
    skip: str = option("", "Comma-separated linear layers to keep unquantized, by name or suffix (e.g. lm_head).")

    def validate(self) -> None:
        super().validate()
        if self.scheme not in SCHEMES:
            raise InvalidInputError(f"unknown scheme {self.scheme!r}", hint=" or ".join(SCHEMES))
        if self.group_size not in GROUP_SIZES:
            raise InvalidInputError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise InvalidInputError(f"unknown compute dtype {self.compute_dtype!r}", hint=" or ".join(COMPUTE_DTYPES))

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.skip.split(",") if name.strip())
