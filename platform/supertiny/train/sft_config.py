"""Options of ``supertiny train sft``."""

import dataclasses

from supertiny.errors import InvalidInputError
from supertiny.options import option
from supertiny.train.train_config import TrainConfig

VERDICT_FILTERS = ("pass", "any")


@dataclasses.dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on the snapshot's conversations; the loss is on the assistant turns only."""

    verdict: str = option("pass", "Records to learn from: pass (verified passing, or unverified traffic) or any.",
                          choices=VERDICT_FILTERS)

    def validate(self) -> None:
        super().validate()
        if self.verdict not in VERDICT_FILTERS:
            raise InvalidInputError(f"unknown verdict filter {self.verdict!r}", hint="pass or any")
