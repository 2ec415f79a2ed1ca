"""Built-in stage-3 compressors (prune, quantize, gguf export) and the backend that serves quantized models."""

import supertiny
from supertiny.compress.gguf_compressor import GGUFCompressor
from supertiny.compress.prune_compressor import PruneCompressor
from supertiny.compress.quantize_compressor import QuantizeCompressor
from supertiny.compress.quantized_backend import QuantizedBackend


@supertiny.hookimpl(trylast=True)
def register_compressors(register):
    register(PruneCompressor())
    register(QuantizeCompressor())
    register(GGUFCompressor())


@supertiny.hookimpl(trylast=True)
def register_backends(register):
    register(QuantizedBackend())

