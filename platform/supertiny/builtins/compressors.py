"""Built-in stage-3 compressors (prune, quantize, gguf export), the backend that serves quantized models, and the
``heal`` trainer (kd of a pruned model from its parent, stage ``healed``)."""

import supertiny
from supertiny.compress.gguf_compressor import GGUFCompressor
from supertiny.compress.heal import HealTrainer
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


@supertiny.hookimpl(trylast=True)
def register_trainers(register):
    register(HealTrainer())
