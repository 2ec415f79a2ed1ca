"""Options of ``supertiny train grpo``."""

import dataclasses

from supertiny.errors import InvalidInputError
from supertiny.options import option
from supertiny.train.train_config import TrainConfig

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


@dataclasses.dataclass
class GRPOConfig(TrainConfig):
    """Group relative policy optimisation with the domain's verifier as the reward: each step samples a group of
    answers per task from the student, scores each pass (1) or fail (0), and moves the student towards the answers
    that beat their group's mean."""

    learning_rate: float | None = option(None, "Peak learning rate (default: 2e-5 with LoRA, 1e-6 for full "
                                         "fine-tuning).")
    batch_size: int = option(1, "Tasks per forward pass (each with its --group-size answers).")
    group_size: int = option(4, "Answers sampled per task and compared with each other (GRPO's G; at least 2).")
    max_new_tokens: int = option(256, "Tokens per sampled answer.")
    max_length: int = option(1024, "Prompt tokens at most: longer tasks are left out.")
    temperature: float = option(1.0, "Sampling temperature of the group's answers.")
    beta: float = option(0.0, "KL penalty towards the starting model (0: none, and no reference model is needed).")
    loss_type: str = option("dapo", "Policy loss (TRL's GRPO loss types).", choices=LOSS_TYPES)
    invalid_reward: float = option(0.0, "Reward of an answer whose tool calls cannot be read (a fail scores 0, a pass "
                                   "1); below 0 punishes broken markup harder than a wrong value.")
    task_limit: int | None = option(None, "Train on the first N tasks of the split only (default: all).")
    use_prompt: bool = option(False, "Prompt with the domain's system prompt and few-shot examples (off: the student "
                              "learns to answer the conversation as it will be served).")
    spell_markup: bool = option(False, "Not used by grpo: the student is trained on the tokens it samples itself.")

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-5 if self.lora else 1e-6

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise InvalidInputError("--group-size must be at least 2: GRPO compares answers within a group")
        if self.max_new_tokens < 1:
            raise InvalidInputError("--max-new-tokens must be at least 1")
        if self.temperature <= 0:
            raise InvalidInputError("--temperature must be above 0: a group of greedy answers is one answer")
        if self.beta < 0:
            raise InvalidInputError("--beta must be at least 0")
        if self.loss_type not in LOSS_TYPES:
            raise InvalidInputError(f"unknown loss type {self.loss_type!r}", hint=f"one of {', '.join(LOSS_TYPES)}")
        if self.invalid_reward > 0:
            raise InvalidInputError("--invalid-reward must be at most 0 (a fail scores 0)")
        if self.task_limit is not None and self.task_limit < 1:
            raise InvalidInputError("--task-limit must be at least 1")
        if self.train_added_tokens:
            raise InvalidInputError("--train-added-tokens is not supported by grpo", hint="use it with sft, rft or kd")
