"""The options every compressor shares. Each field's ``metadata["help"]`` is also its ``--option`` help;
``metadata["choices"]`` makes the option a choice (see :func:`supertiny.cli.app.config_options`)."""

import dataclasses
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.options import option


@dataclasses.dataclass
class CompressConfig:
    threads: int = option(0, "torch CPU threads (0: torch's default).")

    def validate(self) -> None:
        """Raise InvalidInputError on values no compressor can use."""
        if self.threads < 0:
            raise InvalidInputError("--threads must be at least 0")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
