"""``kd``: logit distillation. The teacher and the student read the same tokens (the snapshot's
conversations, or with ``--on-policy`` completions the student samples itself, as in GKD); the loss
(:func:`supertiny.train.kd_loss.distillation_loss`) compares their next-token distributions on the
assistant tokens, or with ``--positions all`` on every token of the conversation (healing a pruned model).

By default the teacher reads each conversation behind the domain's system prompt and few-shot turns,
the context it harvested the data with, while the student reads it bare (context distillation, see
:mod:`supertiny.train.kd_data`).

Logits can only be compared over one vocabulary: the teacher's tokenizer must be the student's (the
default Qwen2.5-Coder 0.5B / 1.5B pair shares one); anything else is refused before training.
"""

import random
from typing import Any

from supertiny.artifacts.conversation import IGNORE_INDEX
from supertiny.artifacts.facts import compute_dtype, model_facts, model_ref
from supertiny.errors import InvalidInputError
from supertiny.store import ModelVersion
from supertiny.train.base import TrainContext, Trainer, TrainResult
from supertiny.train.chat_data import markup_spellings
from supertiny.train.kd_config import KDConfig
from supertiny.train.kd_data import distillation_examples
from supertiny.train.labelled_loss import trained_logits
from supertiny.train.resources import training_dtype
from supertiny.train.sft_trainer import training_records


class KDTrainer(Trainer):
    name = "kd"
    description = "logit distillation from the teacher (forward KL or generalised JSD), optionally on-policy"
    config_class = KDConfig
    teacher = "required"
    teacher_help = "The model whose next-token distributions the student learns; it must share its tokenizer."

    def check(self, context: TrainContext) -> None:
        from supertiny.artifacts.hf import load_tokenizer, tokenizer_difference
        from supertiny.models.versions import require_hf_weights

        assert context.teacher is not None
        config: KDConfig = context.config  # type: ignore[assignment]
        if not training_records(context.items(), config.verdict):
            raise InvalidInputError(f"snapshot {context.dataset.name}@{context.dataset.version} has no passing "
                                    f"record in split {config.split!r}", hint="or pass --verdict any")
        require_hf_weights(context.teacher, "training")
        difference = tokenizer_difference(load_tokenizer(model_ref(context.student)),
                                          load_tokenizer(model_ref(context.teacher)))
        if difference:
            raise InvalidInputError(f"cannot distil {context.teacher.name!r} into {context.student.name!r}: their "
                                    f"tokenizers differ ({difference})",
                                    hint="logit distillation needs one vocabulary; use sft or rft on the teacher's "
                                         "samples instead")

    def resident_models(self, context: TrainContext) -> list[ModelVersion]:
        return [context.teacher] if context.teacher is not None else []

    @staticmethod
    def _teacher_context(context: TrainContext) -> Any:
        """messages -> the domain's context before them, or None (no domain, or --no-teacher-context)."""
        from supertiny.prototype.agent import context_messages
        from supertiny.registry import lookup

        config: KDConfig = context.config  # type: ignore[assignment]
        if not config.teacher_context or not context.domain:
            return None
        domain = lookup("domain", context.domain)
        return lambda messages: context_messages(domain, messages)

    def train(self, context: TrainContext) -> TrainResult:
        import dataclasses

        import datasets
        from transformers import TrainingArguments

        from supertiny.artifacts.hf import load_model, load_tokenizer, set_threads
        from supertiny.train.hf_loop import run_trainer, training_arguments
        from supertiny.train.modeling import added_token_ids, prepare_student

        assert context.teacher is not None
        config: KDConfig = context.config  # type: ignore[assignment]
        set_threads(config.threads)
        student, teacher = model_ref(context.student), model_ref(context.teacher)
        context.progress.phase(f"loading {student.name} and {teacher.name}")
        tokenizer = load_tokenizer(student)
        records = training_records(context.items(), config.verdict, config.call_prose, config.balance_categories)
        spell = markup_spellings(tokenizer) if config.spell_markup else None
        rows, stats = distillation_examples(tokenizer, records, config.max_length, self._teacher_context(context),
                                            spell, whole=config.positions == "all")
        if not rows:
            raise InvalidInputError(f"nothing to train on: no record has an assistant turn within --max-length "
                                    f"{config.max_length}")
        dtype, mixed = training_dtype(config, model_facts(student))
        teacher_facts = model_facts(teacher)
        teacher_model = load_model(teacher, compute_dtype(teacher_facts),
                                   trainable=False)
        model = prepare_student(student, config, dtype, added_token_ids(tokenizer, (row["labels"] for row in rows)))
        dataset = datasets.Dataset.from_list(rows)
        output_dir = context.run_dir / "checkpoints"
        args = TrainingArguments(**training_arguments(config, output_dir, mixed))
        trainer = make_distillation_trainer(model=model, teacher=teacher_model, tokenizer=tokenizer, config=config,
                                            args=args, dataset=dataset)
        metrics = run_trainer(trainer, output_dir, context.progress)
        metrics.update({f"data_{key}": value for key, value in dataclasses.asdict(stats).items()})
        metrics["on_policy_steps"] = trainer.on_policy_batches
        metrics["teacher_agreement"] = trainer.agreeing / trainer.positions if trainer.positions else None
        return TrainResult(model=trainer.model, tokenizer=tokenizer, metrics=metrics)


def collate(examples: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded ids, attention masks and labels of the student and the teacher, with their prompt lengths."""
    import torch

    batch: dict[str, Any] = {}
    for prefix in ("", "teacher_"):
        rows = [(example[f"{prefix}input_ids"], example[f"{prefix}labels"]) for example in examples]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, row_labels) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(row_labels)
        batch.update({f"{prefix}input_ids": input_ids, f"{prefix}attention_mask": attention_mask,
                      f"{prefix}labels": labels,
                      f"{prefix}prompt_length": torch.tensor([example[f"{prefix}prompt_length"]
                                                              for example in examples], dtype=torch.long)})
    return batch


def make_distillation_trainer(*, model: Any, teacher: Any, tokenizer: Any, config: KDConfig, args: Any,
                              dataset: Any) -> Any:
    """A ``transformers.Trainer`` whose loss is the distillation loss against ``teacher``."""
    import torch
    from transformers import Trainer as HFTrainer

    stop_ids = _stop_ids(model, tokenizer)

    class DistillationTrainer(HFTrainer):
        on_policy_batches = 0
        positions = 0  # trained positions seen, and those where the teacher ranked the verified token first
        agreeing = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if config.on_policy > 0 and self._draw() < config.on_policy:
                inputs = self._on_policy(model, inputs)
                self.on_policy_batches += 1
            loss, student_logits, agree = distillation_step(model, teacher, inputs, config)
            if model.training:
                self.positions += agree.numel()
                self.agreeing += int(agree.sum())
            return (loss, {"logits": student_logits}) if return_outputs else loss

        def _draw(self) -> float:
            """Deterministic per step, so a resumed run makes the same on-/off-policy choices."""
            return random.Random(config.seed * 1_000_003 + self.state.global_step).random()

        @torch.no_grad()
        def _on_policy(self, model, inputs):
            """Replace each row's last assistant turn by a completion the student samples now."""
            return on_policy_batch(model, inputs, config, tokenizer, stop_ids)

    trainer = DistillationTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                  data_collator=lambda examples: collate(examples, tokenizer.pad_token_id))
    trainer.model_accepts_loss_kwargs = False  # the loss is a per-token mean: let the trainer scale accumulation
    return trainer


def distillation_step(model: Any, teacher: Any, inputs: dict[str, Any], config: KDConfig) -> tuple[Any, Any, Any]:
    """(loss, the student's logits at the trained positions, whether the teacher ranked each trained token
    first) of one collated batch."""
    import torch

    from supertiny.train.kd_loss import corrected_loss, distillation_loss

    student_logits = trained_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
    with torch.no_grad():
        teacher_logits = trained_logits(teacher, inputs["teacher_input_ids"].to(teacher.device),
                                        inputs["teacher_attention_mask"].to(teacher.device),
                                        inputs["teacher_labels"].to(teacher.device))
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    student_logits = student_logits[:, :vocab]
    teacher_logits = teacher_logits[:, :vocab].to(student_logits.device)
    targets = inputs["labels"][:, 1:]
    targets = targets[targets != IGNORE_INDEX]
    if config.disagreement == "label" and config.positions == "answers":
        loss, agree = corrected_loss(student_logits, teacher_logits, targets, beta=config.beta,
                                     temperature=config.temperature)
    else:
        loss = distillation_loss(student_logits, teacher_logits, beta=config.beta, temperature=config.temperature)
        agree = teacher_logits.argmax(dim=-1) == targets
    if config.sft_weight > 0:
        loss = loss + config.sft_weight * torch.nn.functional.cross_entropy(student_logits.float(), targets)
    return loss, student_logits, agree


def on_policy_batch(model: Any, inputs: dict[str, Any], config: KDConfig, tokenizer: Any,
                    stop_ids: list[int]) -> dict[str, Any]:
    """``inputs`` with each row's last assistant turn replaced by a completion ``model`` samples now (for the
    student and the teacher alike); call it without gradients."""
    import torch

    was_training = model.training
    model.eval()
    rows = []
    try:
        for row in range(inputs["input_ids"].shape[0]):
            prompt = inputs["input_ids"][row, : int(inputs["prompt_length"][row])].unsqueeze(0)
            generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                       do_sample=True, temperature=config.sample_temperature, top_k=0,
                                       top_p=1.0, max_new_tokens=config.max_new_tokens,
                                       eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                                       use_cache=True)[0, prompt.shape[1]:].tolist()
            end = next((index + 1 for index, token in enumerate(generated) if token in stop_ids), len(generated))
            completion = generated[:end][: max(config.max_length - prompt.shape[1], 1)]
            teacher_prompt = inputs["teacher_input_ids"][row, : int(inputs["teacher_prompt_length"][row])]
            rows.append(_with_completion("", prompt[0].tolist(), completion)
                        | _with_completion("teacher_", teacher_prompt.tolist(), completion))
    finally:
        model.train(was_training)
    batch = collate(rows, tokenizer.pad_token_id)
    return {key: value.to(inputs["input_ids"].device) for key, value in batch.items()}


def _with_completion(prefix: str, prompt: list[int], completion: list[int]) -> dict[str, Any]:
    return {f"{prefix}input_ids": prompt + completion, f"{prefix}labels": [IGNORE_INDEX] * len(prompt) + completion,
            f"{prefix}prompt_length": len(prompt)}


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
