"""Stage 3: compress a student.

One algorithm = one ``<algo>_config.py`` dataclass (its fields are also the CLI options of
``supertiny compress <algo>``) + one ``<algo>_compressor.py``. :mod:`supertiny.runs.pipeline` runs
any registered compressor and writes the result as a new model version whose parent is the input
model (stage ``pruned`` or ``quantized``). Healing a pruned model (distilling it back towards its parent)
is a trainer: ``supertiny train heal --student PRUNED --data SNAPSHOT``.
"""
