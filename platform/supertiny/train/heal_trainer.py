"""``heal``: distil a pruned model back towards the model it was pruned from.

``heal`` is the kd trainer (:class:`~supertiny.train.kd_trainer.KDTrainer`: the same options and loss)
registered under its own name so its models get the registry stage ``healed``, with its own defaults
(:class:`HealConfig`: the parent reads the bare conversation, and every token of it is distilled, and
the teacher is the student's parent unless ``--teacher`` names another):
``supertiny train heal --student PRUNED --data SNAPSHOT``. The healed row's parent is the pruned model.
"""

from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.store import Dataset, ModelVersion, Store
from supertiny.train.heal_config import HealConfig
from supertiny.train.kd_trainer import KDTrainer


class HealTrainer(KDTrainer):
    name = "heal"
    description = "kd of a pruned model from the model it was pruned from (stage healed)"
    stage = "healed"
    config_class = HealConfig
    name_pattern = "<student>-healed"
    teacher_help = "The model the student was pruned from (default: the student's parent)."

    def default_teacher(self, store: Store, model: ModelVersion) -> str | None:
        from supertiny.models.versions import lineage

        chain = lineage(store, model.name)
        if len(chain) < 2:
            raise InvalidInputError(f"model {model.name!r} has no parent to heal it from", hint="give --teacher")
        return chain[1].name

    def default_name(self, model: ModelVersion, dataset: Dataset | None, config: Any) -> str:
        return f"{model.name}-healed"
