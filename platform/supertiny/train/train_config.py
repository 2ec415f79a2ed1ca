"""The options every trainer shares. Each field's ``metadata["help"]`` is also its ``--option`` help;
``metadata["choices"]`` makes the option a choice."""

import dataclasses
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.options import option

PRECISIONS = ("auto", "bf16", "fp32", "mixed")


@dataclasses.dataclass
class TrainConfig:
    epochs: float = option(1.0, "Passes over the training data.")
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1: run the epochs).")
    learning_rate: float | None = option(None, "Peak learning rate (default: 2e-4 with LoRA, 1e-5 for full "
                                         "fine-tuning).")
    batch_size: int = option(1, "Sequences per forward pass.")
    grad_accum: int = option(4, "Forward passes per optimizer step (effective batch = batch-size x grad-accum).")
    max_length: int = option(1024, "Tokens per sequence; longer conversations are cut at the end.")
    lora: bool = option(True, "Train LoRA adapters (merged into the weights on save); --no-lora trains every weight.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.0, "Dropout on the LoRA path (0: none; any other value draws a random mask "
                                 "for each adapted module at every forward pass).")
    adapter_fp32: bool = option(True, "Keep LoRA adapters in fp32 (stable updates); --no-adapter-fp32 keeps them in "
                                "the weights' dtype: faster LoRA steps on a CPU in bf16.")
    train_added_tokens: bool = option(False, "With LoRA, also train the embedding rows of the tokenizer's added tokens "
                                      "that the assistant turns use (e.g. Qwen's <tool_call>): a base model that "
                                      "never wrote them cannot learn them through adapters alone; sft, rft and kd).")
    spell_markup: bool = option(True, "Train the chat template's non-special added tokens that open and close a call "
                                "(Qwen's <tool_call>, </tool_call>) as the text pieces that spell them: a student that "
                                "never writes the token itself learns the tag as text it already writes. sft, rft, "
                                "kd and heal.")
    lora_targets: str = option("all-linear", "Modules that get adapters: all-linear or a comma-separated list "
                               "(e.g. q_proj,v_proj).")
    precision: str = option("auto", "Weights and compute: bf16, fp32, or mixed (fp32 weights, bf16 compute). auto: "
                            "the model's own dtype with LoRA, mixed for full fine-tuning of a bf16 model.",
                            choices=PRECISIONS)
    lr_scheduler: str = option("cosine", "Learning-rate schedule.",
                               choices=("cosine", "linear", "constant", "constant_with_warmup"))
    warmup: float = option(0.03, "Warm-up: a fraction of the steps (< 1) or a number of steps.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward passes: less memory, slower steps.")
    call_prose: bool = option(False, "Also train on the text a teacher writes around its tool calls (by default an "
                              "assistant turn that calls tools is trained on its calls alone, so a teacher's "
                              "narration does not teach the student to answer in prose).")
    balance_categories: bool = option(False, "Repeat each category's records up to the count of the largest, so "
                                      "the categories a teacher passes most (on BFCL: declining irrelevant "
                                      "requests) do not drown the rest. Off by default: on a small snapshot it "
                                      "repeats the few answers of a rare category many times.")
    split: str = option("train", "Snapshot split to train on.")
    limit: int | None = option(None, "Train on the first N records of the split only.")
    seed: int = option(0, "Seed of data order, dropout and adapter initialisation.")
    save_steps: int = option(50, "Write a resumable checkpoint every N optimizer steps.")
    logging_steps: int = option(1, "Record the loss every N optimizer steps.")
    threads: int = option(0, "torch CPU threads (0: torch's default).")

    def validate(self) -> None:
        """Raise InvalidInputError on values no training can use."""
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "max_length": self.max_length,
                    "lora_r": self.lora_r, "save_steps": self.save_steps, "logging_steps": self.logging_steps}
        for name, value in positive.items():
            if value < 1:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs <= 0 and self.max_steps < 1:
            raise InvalidInputError("give --epochs above 0 or --max-steps")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise InvalidInputError("--learning-rate must be above 0")
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"unknown precision {self.precision!r}", hint=f"one of {', '.join(PRECISIONS)}")
        if self.limit is not None and self.limit < 1:
            raise InvalidInputError("--limit must be at least 1")
        if not 0 <= self.lora_dropout < 1:
            raise InvalidInputError("--lora-dropout must be in [0, 1)")

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora else 1e-5

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The options that change what a run trains: re-running with other values of these is another
        run, not a resume (threads and checkpoint spacing may change between attempts)."""
        return {key: value for key, value in self.as_dict().items() if key not in RESUME_NEUTRAL}


RESUME_NEUTRAL = ("threads", "save_steps")
