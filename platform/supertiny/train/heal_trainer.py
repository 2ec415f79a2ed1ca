"""``heal``: distil a pruned model back towards the model it was pruned from.

``heal`` is the kd trainer (:class:`~supertiny.train.kd_trainer.KDTrainer`: the same options and loss)
registered under its own name so its models get the registry stage ``healed``, with its own defaults
(:class:`HealConfig`: the parent reads the bare conversation, and every token of it is distilled):
``supertiny train heal --student PRUNED --teacher PARENT --data SNAPSHOT``, or ``supertiny compress prune
... --heal``, which the CLI runs right after pruning with the unpruned parent as the teacher. The healed
row's parent is the pruned model.
"""

from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.progress import Progress
from supertiny.store import Store
from supertiny.train.heal_config import HealConfig
from supertiny.train.kd_trainer import KDTrainer
from supertiny.train.pipeline import TrainedModel


class HealTrainer(KDTrainer):
    name = "heal"
    description = "kd of a pruned model from the model it was pruned from (stage healed)"
    stage = "healed"
    config_class = HealConfig
    teacher_help = "The model the student was pruned from (default of `compress prune --heal`: its parent)."


def heal_model(
    store: Store,
    settings: Settings,
    pruned: str,
    *,
    data: str,
    teacher: str | None = None,
    name: str | None = None,
    config: HealConfig | None = None,
    domain: str | None = None,
    progress: Progress | None = None,
    check_memory: bool = True,
) -> TrainedModel:
    """Train ``pruned`` on snapshot ``data`` by distillation from ``teacher`` (default: its parent)."""
    from supertiny.models.versions import lineage
    from supertiny.train.pipeline import train_model

    if teacher is None:
        chain = lineage(store, pruned)
        if len(chain) < 2:
            raise InvalidInputError(f"model {pruned!r} has no parent to heal it from", hint="give --teacher")
        teacher = chain[1].name
    return train_model(store, settings, HealTrainer.name, student=pruned, data=data, teacher=teacher,
                       config=config, name=name or f"{pruned}-healed", domain=domain, progress=progress,
                       check_memory=check_memory)
