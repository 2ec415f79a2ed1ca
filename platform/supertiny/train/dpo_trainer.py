"""``dpo``: direct preference optimisation with TRL's DPOTrainer. A pair is a passing and a failing answer
to the same task (the same ``task_id``), from a snapshot that holds both verdicts, from answers sampled
fresh from the student (``--sample K``), or both.

The prompt of a pair is the conversation the two trajectories share; chosen and rejected are the
first assistant turns where they part, rendered with the student's chat template and tools. Pairs
whose two answers render the same are dropped.
"""

import dataclasses
import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from supertiny.artifacts.conversation import assistant_spans
from supertiny.artifacts.facts import model_facts, model_ref
from supertiny.errors import InvalidInputError
from supertiny.store import DatasetItem, ModelVersion
from supertiny.train.base import TrainContext, Trainer, TrainResult
from supertiny.train.dpo_config import DPOConfig
from supertiny.train.labelled_loss import compact_fused_heads
from supertiny.train.resources import training_dtype

_ID_KEYS = ("id", "tool_call_id")


@dataclasses.dataclass
class PairStats:
    tasks_with_pairs: int = 0
    pairs: int = 0
    identical: int = 0  # chosen and rejected render the same
    unpaired: int = 0  # the trajectories part on a turn that is not the assistant's


def preference_pairs(tokenizer: Any, items: Sequence[DatasetItem],
                     max_pairs_per_task: int) -> tuple[list[dict[str, str]], PairStats]:
    """(prompt, chosen, rejected) texts from passing and failing answers to the same task."""
    stats = PairStats()
    pairs: list[dict[str, str]] = []
    for passing, failing in _groups(items):
        made = 0
        for good, bad in itertools.product(passing, failing):
            if made >= max_pairs_per_task:
                break
            pair = _pair(tokenizer, good, bad, stats)
            if pair is not None:
                pairs.append(pair)
                made += 1
        stats.tasks_with_pairs += made > 0
    stats.pairs = len(pairs)
    return pairs, stats


def verdict_counts(items: Sequence[DatasetItem]) -> tuple[int, int, int]:
    """(passing, failing, tasks with both) among items that name their task."""
    groups = _groups(items)
    passing = sum(item.verdict == "pass" for item in items)
    failing = sum(item.verdict == "fail" for item in items)
    return passing, failing, len(groups)


def _groups(items: Sequence[DatasetItem]) -> list[tuple[list[DatasetItem], list[DatasetItem]]]:
    by_task: dict[int, tuple[list[DatasetItem], list[DatasetItem]]] = defaultdict(lambda: ([], []))
    for item in items:
        if item.task_id is None or item.verdict not in ("pass", "fail"):
            continue
        by_task[item.task_id][0 if item.verdict == "pass" else 1].append(item)
    return [(passing, failing) for _, (passing, failing) in sorted(by_task.items()) if passing and failing]


def _comparable(message: dict[str, Any]) -> str:
    """A message without the ids that differ between samples of the same answer."""
    cleaned = {key: value for key, value in message.items() if key not in _ID_KEYS}
    if cleaned.get("tool_calls"):
        cleaned["tool_calls"] = [{key: value for key, value in call.items() if key not in _ID_KEYS}
                                 for call in cleaned["tool_calls"]]
    return json.dumps(cleaned, sort_keys=True, default=str)


def _pair(tokenizer: Any, good: DatasetItem, bad: DatasetItem, stats: PairStats) -> dict[str, str] | None:
    shared = 0
    while (shared < min(len(good.messages), len(bad.messages))
           and _comparable(good.messages[shared]) == _comparable(bad.messages[shared])):
        shared += 1
    if (shared == 0 or shared >= len(good.messages) or shared >= len(bad.messages)
            or good.messages[shared].get("role") != "assistant" or bad.messages[shared].get("role") != "assistant"):
        stats.unpaired += 1
        return None
    prefix = list(good.messages[:shared])
    chosen_text, chosen_spans = assistant_spans(tokenizer, [*prefix, good.messages[shared]], good.tools)
    rejected_text, rejected_spans = assistant_spans(tokenizer, [*prefix, bad.messages[shared]], good.tools)
    if not chosen_spans or not rejected_spans:
        stats.unpaired += 1
        return None
    (chosen_start, chosen_end), (rejected_start, rejected_end) = chosen_spans[-1], rejected_spans[-1]
    prompt = chosen_text[:chosen_start]
    chosen, rejected = chosen_text[chosen_start:chosen_end], rejected_text[rejected_start:rejected_end]
    if rejected_text[:rejected_start] != prompt:
        stats.unpaired += 1
        return None
    if chosen == rejected:
        stats.identical += 1
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


class DPOTrainer(Trainer):
    name = "dpo"
    description = "direct preference optimisation on passing vs failing answers to the same task"
    config_class = DPOConfig

    def check(self, context: TrainContext) -> None:
        from supertiny.registry import lookup

        config: DPOConfig = context.config  # type: ignore[assignment]
        if config.sample:
            if not context.domain:
                raise InvalidInputError("--sample needs a snapshot made from a domain's harvest runs")
            lookup("domain", context.domain)
            return
        passing, failing, tasks = verdict_counts(context.items())
        if tasks == 0:
            raise InvalidInputError(f"snapshot {context.dataset.name}@{context.dataset.version} has no task with both "
                                    f"a passing and a failing answer ({passing} pass, {failing} fail)",
                                    hint="snapshot the harvest runs without --verdict pass, or add --sample K to "
                                         "sample the student")

    def resident_models(self, context: TrainContext) -> list[ModelVersion]:
        config: DPOConfig = context.config  # type: ignore[assignment]
        return [] if config.lora or config.precompute_ref else [context.student]  # the frozen reference copy

    def train(self, context: TrainContext) -> TrainResult:
        import datasets
        import trl

        from supertiny.artifacts.hf import load_tokenizer, set_threads
        from supertiny.data.snapshot import snapshot_items
        from supertiny.train.hf_loop import run_trainer, training_arguments
        from supertiny.train.modeling import prepare_student
        from supertiny.train.sampling import sample_and_snapshot, sampler_label

        config: DPOConfig = context.config  # type: ignore[assignment]
        set_threads(config.threads)
        items = list(context.items())
        sampling: dict[str, Any] | None = None
        if config.sample:
            sampled = sample_and_snapshot(
                context, tag="samples", sampler=context.student.name, label=sampler_label(context, "samples"),
                samples_per_task=config.sample, temperature=config.sample_temperature,
                max_new_tokens=config.sample_max_new_tokens, limit=config.task_limit, use_prompt=False, verdict=None,
                description=f"sampling {config.sample} per task", engine=config.engine)
            sampling = sampled.summary()
            if sampled.snapshot is not None:
                items += snapshot_items(context.store, sampled.snapshot)
        student = model_ref(context.student)
        context.progress.phase(f"loading {student.name}")
        tokenizer = load_tokenizer(student)
        pairs, stats = preference_pairs(tokenizer, items, config.max_pairs_per_task)
        if not pairs:
            raise InvalidInputError(f"no preference pair: {stats.identical} pairs render the same answer, "
                                    f"{stats.unpaired} part on a non-assistant turn")
        dtype, mixed = training_dtype(config, model_facts(student))
        model = prepare_student(student, config, dtype)
        output_dir = context.run_dir / "checkpoints"
        args = trl.DPOConfig(**training_arguments(config, output_dir, mixed), beta=config.beta,
                             loss_type=[config.loss_type], max_length=config.max_length,
                             precompute_ref_log_probs=config.precompute_ref, dataset_num_proc=None)
        trainer = trl.DPOTrainer(model=model, ref_model=None, args=args,
                                 train_dataset=datasets.Dataset.from_list(pairs), processing_class=tokenizer)
        compact_fused_heads(trainer)
        metrics = run_trainer(trainer, output_dir, context.progress)
        last = next((entry for entry in reversed(trainer.state.log_history) if "rewards/accuracies" in entry), {})
        metrics.update({"reward_accuracy": last.get("rewards/accuracies"), "reward_margin": last.get("rewards/margins"),
                        **{f"data_{key}": value for key, value in dataclasses.asdict(stats).items()}})
        if sampling:
            metrics["sampling"] = sampling
        return TrainResult(model=trainer.model, tokenizer=tokenizer, metrics=metrics)
