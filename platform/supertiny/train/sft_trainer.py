"""``sft``: supervised fine-tuning with TRL's SFTTrainer on pre-tokenized conversations whose labels keep
only the assistant tokens (see :mod:`supertiny.artifacts.conversation`)."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supertiny.artifacts.facts import ModelRef, model_facts, model_ref
from supertiny.errors import InvalidInputError
from supertiny.progress import Progress
from supertiny.store import DatasetItem
from supertiny.train.base import TrainContext, Trainer, TrainResult
from supertiny.train.chat_data import markup_spellings, tokenize_records, without_call_prose
from supertiny.train.labelled_loss import labelled_positions_loss
from supertiny.train.resources import training_dtype
from supertiny.train.sft_config import SFTConfig
from supertiny.train.train_config import TrainConfig

Record = tuple[Sequence[dict[str, Any]], Sequence[Any] | None]


def training_records(items: Sequence[DatasetItem], verdict: str = "pass", call_prose: bool = False,
                     balance: bool = False) -> list[Record]:
    """(messages, tools) of the items to learn from: with ``verdict="pass"`` failed samples are left out
    (unverified records, such as logged traffic, are kept); without ``call_prose`` the text around tool calls is;
    with ``balance`` every category is repeated up to the size of the largest (see :func:`balanced`)."""
    kept = [item for item in items if verdict == "any" or item.verdict in ("pass", None)]
    if balance:
        kept = balanced(kept)
    return [(item.messages if call_prose else without_call_prose(item.messages), item.tools) for item in kept]


def balanced(items: Sequence[DatasetItem]) -> list[DatasetItem]:
    """``items`` with each category's records repeated (in order, cycling) up to the count of the largest
    category, interleaved round-robin: a teacher passes some categories far more often than others (on BFCL
    it declines irrelevant requests reliably and misses most parallel calls), and the rare ones would
    otherwise be drowned."""
    groups: dict[str | None, list[DatasetItem]] = {}
    for item in items:
        groups.setdefault(item.category, []).append(item)
    if len(groups) < 2:
        return list(items)
    size = max(len(group) for group in groups.values())
    return [group[index % len(group)] for index in range(size) for group in groups.values()]


def fine_tune(student: ModelRef, records: Sequence[Record], config: TrainConfig, output_dir: Path,
              progress: Progress, description: str = "training") -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune ``student`` on ``records``; (model, tokenizer, metrics). Resumes from ``output_dir``."""
    import dataclasses

    import datasets
    import trl

    from supertiny.artifacts.hf import load_tokenizer, set_threads
    from supertiny.train.hf_loop import run_trainer, training_arguments
    from supertiny.train.modeling import added_token_ids, prepare_student

    set_threads(config.threads)
    progress.phase(f"loading {student.name}")
    tokenizer = load_tokenizer(student)
    spell = markup_spellings(tokenizer) if config.spell_markup else None
    examples, stats = tokenize_records(tokenizer, records, config.max_length, spell)
    if not examples:
        raise InvalidInputError(f"nothing to train on: none of {stats.conversations} records has an assistant turn "
                                f"within --max-length {config.max_length}")
    dtype, mixed = training_dtype(config, model_facts(student))
    model = prepare_student(student, config, dtype,
                            added_token_ids(tokenizer, (example.labels for example in examples)))
    dataset = datasets.Dataset.from_list([{"input_ids": example.input_ids, "labels": example.labels}
                                          for example in examples])
    args = trl.SFTConfig(**training_arguments(config, output_dir, mixed), max_length=None, packing=False,
                         dataset_num_proc=None)
    trainer = _labelled_loss_trainer()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    metrics = run_trainer(trainer, output_dir, progress, description)
    metrics.update({f"data_{key}": value for key, value in dataclasses.asdict(stats).items()})
    return trainer.model, tokenizer, metrics


class SFTTrainer(Trainer):
    name = "sft"
    description = "supervised fine-tuning on a snapshot; loss on the assistant turns only"
    config_class = SFTConfig

    def check(self, context: TrainContext) -> None:
        if not training_records(context.items(), context.config.verdict):
            raise InvalidInputError(f"snapshot {context.dataset.name}@{context.dataset.version} has no passing "
                                    f"record in split {context.config.split!r}", hint="or pass --verdict any")

    def train(self, context: TrainContext) -> TrainResult:
        records = training_records(context.items(), context.config.verdict, context.config.call_prose,
                                   context.config.balance_categories)
        model, tokenizer, metrics = fine_tune(model_ref(context.student), records, context.config,
                                              context.run_dir / "checkpoints", context.progress)
        return TrainResult(model=model, tokenizer=tokenizer, metrics=metrics)


def _labelled_loss_trainer() -> Any:
    import trl

    class LabelledLossSFTTrainer(trl.SFTTrainer):
        """TRL's trainer with the loss of :mod:`supertiny.train.labelled_loss`: the output head projects the
        labelled positions only (TRL's fused head recomputes every tile in the backward pass, slow on a CPU, and
        multiplies by ``lm_head.weight`` directly, which skips the trainable rows PEFT puts in front of a tied
        head)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, logits = labelled_positions_loss(model, inputs, num_items_in_batch)
            return (loss, {"logits": logits}) if return_outputs else loss

    return LabelledLossSFTTrainer
