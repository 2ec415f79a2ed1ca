"""``rft``: rejection fine-tuning. Each round samples k answers per training task of the snapshot's
domain (round 1 from the student, or from ``--teacher`` when given; later rounds from the model the
previous round trained), keeps those the domain's verifier passes as a snapshot, and fine-tunes the
current model on them (plus, optionally, the original snapshot's passing records).

Rounds are resumable: a finished round leaves its model under ``run_dir/round-N/checkpoints/model``
and is skipped on a re-run; sampling and fine-tuning resume inside a round. Like every checkpoint, the
round models are deleted once the final model is registered.
"""

import gc
from pathlib import Path
from typing import Any

from supertiny.artifacts.facts import ModelRef, model_facts, model_ref
from supertiny.errors import InvalidInputError
from supertiny.store import ModelVersion
from supertiny.train.base import TrainContext, Trainer, TrainResult
from supertiny.train.rft_config import RFTConfig
from supertiny.train.sampling import sample_and_snapshot, sampler_label
from supertiny.train.sft_trainer import fine_tune, training_records


class RFTTrainer(Trainer):
    name = "rft"
    description = "rejection fine-tuning: sample k answers per task, keep the verified ones, fine-tune; R rounds"
    config_class = RFTConfig
    teacher = "optional"
    teacher_help = "Round 1 samples this model instead of the student (any registered model, endpoints too)."
    needs_domain = True

    def check(self, context: TrainContext) -> None:
        config: RFTConfig = context.config  # type: ignore[assignment]
        if config.include_original and not training_records(context.items()):
            raise InvalidInputError(f"--include-original: snapshot {context.dataset.name}@{context.dataset.version} "
                                    f"has no passing record in split {config.split!r}")

    def train(self, context: TrainContext) -> TrainResult:
        import json

        from supertiny.artifacts.hf import save_json, save_model
        from supertiny.data.snapshot import snapshot_items

        config: RFTConfig = context.config  # type: ignore[assignment]
        current = model_ref(context.student)
        save_dtype = model_facts(current).dtype
        original = list(context.items()) if config.include_original else []
        rounds: list[dict[str, Any]] = []
        for number in range(1, config.rounds + 1):
            round_dir = context.run_dir / f"round-{number}"
            done_file = round_dir / "round.json"
            if number < config.rounds and done_file.is_file():
                rounds.append(json.loads(done_file.read_text()))
                current = ModelRef(name=f"{context.name}@round-{number}", path=_round_model(round_dir))
                continue
            sampler = _sampler(context, number, current)
            sampled = sample_and_snapshot(
                context, tag=f"round{number}", sampler=sampler, label=sampler_label(context, f"round-{number}"),
                samples_per_task=config.samples_per_task, temperature=config.temperature,
                max_new_tokens=config.max_new_tokens, limit=config.task_limit, use_prompt=config.use_prompt,
                verdict="pass", description=f"round {number}: sampling {config.samples_per_task} per task",
                engine=config.engine)
            sampled_items = snapshot_items(context.store, sampled.snapshot) if sampled.snapshot else []
            records = training_records(sampled_items, call_prose=config.call_prose)
            if not records and not training_records(original):
                raise InvalidInputError(f"round {number}: none of the {sampled.samples} samples from {sampler} passed "
                                        "the verifier", hint="raise --samples-per-task or --temperature, sample a "
                                        "--teacher, or add --include-original")
            summary = {"round": number, "sampler": sampler, **sampled.summary(), "trained_records": len(records)}
            trained = training_records([*sampled_items, *original], call_prose=config.call_prose,
                                       balance=config.balance_categories)
            model, tokenizer, metrics = fine_tune(current, trained, config, round_dir / "checkpoints",
                                                  context.progress, description=f"round {number}: training")
            summary.update({key: metrics.get(key) for key in ("steps", "loss_first", "loss_last", "tokens_seen")})
            rounds.append(summary)
            if number == config.rounds:
                metrics = {**metrics, "rounds": rounds, "loss_curve": metrics.get("loss_curve", [])}
                return TrainResult(model=model, tokenizer=tokenizer, metrics=metrics)
            context.progress.phase(f"round {number}: saving")
            save_model(model, tokenizer, _round_model(round_dir), save_dtype)
            save_json(done_file, summary)
            current = ModelRef(name=f"{context.name}@round-{number}", path=_round_model(round_dir))
            del model, tokenizer
            gc.collect()
        raise AssertionError("unreachable: the last round returns")  # pragma: no cover


def _round_model(round_dir: Path) -> Path:
    return round_dir / "checkpoints" / "model"


def _sampler(context: TrainContext, number: int, current: ModelRef) -> str:
    """Round 1 samples the teacher when one is given, else the student; later rounds the newest model."""
    if number == 1:
        teacher: ModelVersion | None = context.teacher
        return teacher.name if teacher is not None else context.student.name
    return str(current.path)

