"""Stage 2: transfer the teacher's behaviour to the student.

One algorithm = one ``<algo>_config.py`` dataclass (its fields are also the CLI options of
``supertiny train <algo>``) + one ``<algo>_trainer.py``. :mod:`supertiny.runs.pipeline` runs any
registered trainer and writes the result as a new model version with its lineage.
"""
