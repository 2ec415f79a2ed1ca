"""Options of ``supertiny train rft``."""

import dataclasses

from supertiny.errors import InvalidInputError
from supertiny.options import option
from supertiny.train.train_config import TrainConfig


@dataclasses.dataclass
class RFTConfig(TrainConfig):
    """Rejection fine-tuning: sample, keep what the domain's verifier passes, fine-tune; repeat."""

    rounds: int = option(1, "Sample -> filter -> fine-tune rounds; each round samples from the model the previous "
                         "one trained.")
    samples_per_task: int = option(4, "Answers sampled per training task (k).")
    temperature: float = option(0.8, "Sampling temperature (above 0: k answers must differ).")
    max_new_tokens: int = option(256, "Tokens per sampled answer.")
    task_limit: int | None = option(None, "Sample only the first N tasks of the split (default: all).")
    include_original: bool = option(False, "Also train on the snapshot's own passing records every round.")
    engine: bool = option(False, "Sample through a vLLM engine: the sampler's running one, else one started for "
                          "each round's sampling and stopped after (default: in-process).")
    use_prompt: bool = option(True, "Steer the sampler with the domain's system prompt and few-shot examples (they "
                              "are not part of the training data).")

    def validate(self) -> None:
        super().validate()
        if self.rounds < 1:
            raise InvalidInputError("--rounds must be at least 1")
        if self.samples_per_task < 1:
            raise InvalidInputError("--samples-per-task must be at least 1")
        if self.samples_per_task > 1 and self.temperature <= 0:
            raise InvalidInputError("several samples per task need --temperature above 0")
        if self.max_new_tokens < 1:
            raise InvalidInputError("--max-new-tokens must be at least 1")
        if self.task_limit is not None and self.task_limit < 1:
            raise InvalidInputError("--task-limit must be at least 1")
