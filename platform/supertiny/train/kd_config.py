"""Options of ``supertiny train kd``."""

import dataclasses

from supertiny.errors import InvalidInputError
from supertiny.options import option
from supertiny.train.sft_config import VERDICT_FILTERS
from supertiny.train.train_config import TrainConfig

DISAGREEMENT = ("label", "teacher")
POSITIONS = ("answers", "all")


@dataclasses.dataclass
class KDConfig(TrainConfig):
    """Logit distillation from the teacher on the assistant tokens of the snapshot's conversations."""

    beta: float = option(0.0, "Divergence: 0 = forward KL(teacher||student), 1 = reverse KL, in between the "
                         "generalised JSD.")
    temperature: float = option(1.0, "Softens both distributions; the loss is scaled by temperature².")
    teacher_context: bool = option(True, "The teacher reads each conversation behind the domain's system prompt and "
                                   "few-shot turns (the context it harvested with), the student without them: "
                                   "context distillation. --no-teacher-context gives both the same tokens.")
    disagreement: str = option("label", "Trained positions where the teacher's most likely token is not the "
                               "verified answer's: label = learn the verified token there (cross-entropy), teacher = "
                               "distil the teacher's distribution everywhere (plain kd: where the teacher gives "
                               "the chat template's call markup almost no probability, the student learns not to "
                               "call tools).",
                               choices=DISAGREEMENT)
    positions: str = option("answers", "Positions distilled: answers = the assistant tokens; all = every token of the "
                            "conversation, prompt included, with the teacher's distribution everywhere (healing: "
                            "the pruned model relearns its parent on the domain's own text, prompts included). "
                            "all needs --no-teacher-context.", choices=POSITIONS)
    sft_weight: float = option(0.0, "Add this times the usual next-token loss on the same tokens.")
    on_policy: float = option(0.0, "Fraction of steps trained on completions the student samples itself (GKD's "
                              "lambda; 0 = off).")
    max_new_tokens: int = option(128, "Tokens per on-policy completion.")
    sample_temperature: float = option(0.9, "Temperature of on-policy sampling.")
    verdict: str = option("pass", "Records to learn from: pass (verified passing, or unverified traffic) or any.",
                          choices=VERDICT_FILTERS)

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.beta <= 1.0:
            raise InvalidInputError("--beta must be in [0, 1]")
        if self.temperature <= 0:
            raise InvalidInputError("--temperature must be above 0")
        if not 0.0 <= self.on_policy <= 1.0:
            raise InvalidInputError("--on-policy must be in [0, 1]")
        if self.disagreement not in DISAGREEMENT:
            raise InvalidInputError(f"unknown --disagreement {self.disagreement!r}", hint="label or teacher")
        if self.positions not in POSITIONS:
            raise InvalidInputError(f"unknown --positions {self.positions!r}", hint="answers or all")
        if self.positions == "all" and self.teacher_context:
            raise InvalidInputError("--positions all distils every token the student reads, so the teacher must read "
                                    "the same tokens", hint="add --no-teacher-context")
        if self.positions == "all" and self.on_policy > 0:
            raise InvalidInputError("--positions all distils the snapshot's conversations; on-policy completions "
                                    "train answers only", hint="use --positions answers with --on-policy")
        if self.sft_weight < 0:
            raise InvalidInputError("--sft-weight must be at least 0")
        if self.max_new_tokens < 1:
            raise InvalidInputError("--max-new-tokens must be at least 1")
        if self.on_policy > 0 and self.sample_temperature <= 0:
            raise InvalidInputError("--sample-temperature must be above 0 for on-policy sampling")
        if self.verdict not in VERDICT_FILTERS:
            raise InvalidInputError(f"unknown verdict filter {self.verdict!r}", hint="pass or any")
