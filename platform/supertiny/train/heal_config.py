"""Options of ``supertiny train heal``: kd's, with healing's defaults."""

import dataclasses

from supertiny.options import option
from supertiny.train.kd_config import POSITIONS, KDConfig


@dataclasses.dataclass
class HealConfig(KDConfig):
    """Distil a pruned model back towards the model it was pruned from: kd with healing's defaults."""

    teacher_context: bool = option(False, "The teacher also reads the domain's system prompt and few-shot turns. Off: "
                                   "the unpruned parent is a student, it answers the bare conversation as the "
                                   "pruned model will.")
    positions: str = option("all", "Positions distilled: all = every token of the conversation (the pruned model "
                            "relearns its parent on the domain's own text), "
                            "answers = the assistant tokens only.", choices=POSITIONS)
