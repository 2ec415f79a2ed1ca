"""Config dataclasses that are also CLI schemas: a field made with :func:`option` carries its ``--option`` help
in ``metadata["help"]`` (and ``metadata["choices"]`` makes the option a choice), which
:func:`supertiny.cli.app.config_options` turns into click options. Trainers' and compressors' configs use it."""

import dataclasses
from typing import Any


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field documented for ``--help``."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})
