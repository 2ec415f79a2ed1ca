"""Options of ``supertiny train dpo``."""

import dataclasses

from supertiny.errors import InvalidInputError
from supertiny.options import option
from supertiny.train.train_config import TrainConfig

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


@dataclasses.dataclass
class DPOConfig(TrainConfig):
    """Direct preference optimisation on (passing, failing) answers to the same task."""

    learning_rate: float | None = option(None, "Peak learning rate (default: 5e-5 with LoRA, 5e-7 for full "
                                         "fine-tuning).")
    beta: float = option(0.1, "How far the policy may move from the reference (higher: less).")
    loss_type: str = option("sigmoid", "Preference loss (TRL's DPO loss types).", choices=LOSS_TYPES)
    max_pairs_per_task: int = option(4, "Preference pairs per task at most (each passing x each failing answer).")
    sample: int = option(0, "First sample this many answers per task from the student and pair them too (0: pairs "
                         "from the snapshot only).")
    sample_temperature: float = option(0.8, "Temperature of that sampling.")
    sample_max_new_tokens: int = option(256, "Tokens per sampled answer.")
    task_limit: int | None = option(None, "Sample only the first N tasks of the split (default: all).")
    engine: bool = option(False, "Sample through a vLLM engine: the student's running one, else one started for the "
                          "sampling and stopped after (default: in-process).")
    spell_markup: bool = option(False, "Not supported by dpo, which hands TRL the rendered text: the call tags are "
                                "trained as the tokens TRL's tokenizer makes of them.")
    precompute_ref: bool = option(False, "Compute the reference log-probabilities once before training, so full "
                                  "fine-tuning needs no second model in memory.")

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-5 if self.lora else 5e-7

    def validate(self) -> None:
        super().validate()
        if self.train_added_tokens:
            raise InvalidInputError("--train-added-tokens is not supported by dpo: TRL's DPO trainer scores tokens "
                                    "through the output head's weight directly, past the trainable rows",
                                    hint="use it with sft, rft or kd")
        if self.spell_markup:
            raise InvalidInputError("--spell-markup is not supported by dpo: TRL's DPO trainer tokenizes the rendered "
                                    "text itself", hint="use it with sft, rft, kd or heal")
        if self.beta <= 0:
            raise InvalidInputError("--beta must be above 0")
        if self.loss_type not in LOSS_TYPES:
            raise InvalidInputError(f"unknown loss type {self.loss_type!r}", hint=f"one of {', '.join(LOSS_TYPES)}")
        if self.max_pairs_per_task < 1:
            raise InvalidInputError("--max-pairs-per-task must be at least 1")
        if self.sample < 0:
            raise InvalidInputError("--sample must be at least 0")
        if self.sample > 1 and self.sample_temperature <= 0:
            raise InvalidInputError("--sample above 1 needs --sample-temperature above 0")
        if self.task_limit is not None and self.task_limit < 1:
            raise InvalidInputError("--task-limit must be at least 1")
