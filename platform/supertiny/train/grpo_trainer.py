"""``grpo``: group relative policy optimisation (TRL's GRPOTrainer) with the domain's verifier as the reward.

The tasks are those of the snapshot's records (passing and failing alike: a task the student fails is where
it has most to learn). Each prompt is the task's conversation rendered with the student's chat template and
the task's tools; each sampled answer is parsed for tool calls the way the server parses them, run in the
task's tool environment when the domain has one, and judged by the domain's verifier: 1 for pass, 0 otherwise.
A task is one assistant turn here: a multi-step domain's reward is what its verifier makes of that first turn.
"""

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from supertiny.artifacts.facts import model_facts, model_ref
from supertiny.domain import Domain, DomainTask, Verdict
from supertiny.errors import InvalidInputError
from supertiny.store import DatasetItem, ModelVersion, Task
from supertiny.train.base import TrainContext, Trainer, TrainResult
from supertiny.train.grpo_config import GRPOConfig
from supertiny.train.labelled_loss import compact_fused_heads
from supertiny.train.resources import training_dtype


@dataclasses.dataclass(frozen=True)
class RewardTask:
    task: DomainTask
    tools: list[dict[str, Any]]


class VerifierReward:
    """A TRL reward function: the domain's verdict on each sampled answer (1 pass, 0 otherwise)."""

    __name__ = "verifier"  # TRL logs each reward function's mean under its name

    def __init__(self, domain: Domain, tasks: dict[int, RewardTask], invalid_reward: float = 0.0) -> None:
        self.domain = domain
        self.tasks = tasks
        self.invalid_reward = invalid_reward

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], task_id: Sequence[int],
                 **_: Any) -> list[float]:
        return [self.score(self.tasks[int(identifier)], _text(completion))
                for identifier, completion in zip(task_id, completions, strict=True)]

    def score(self, entry: RewardTask, text: str) -> float:
        from supertiny.models.backend import parse_answer

        parse, message = parse_answer(text, entry.tools)
        if not parse.ok:
            return self.invalid_reward
        return 1.0 if self.verdict(entry.task, parse.calls, message.openai()).verdict == "pass" else 0.0

    def verdict(self, task: DomainTask, calls: list[Any], message: dict[str, Any]) -> Verdict:
        try:
            environment = self.domain.environment(task)
            if environment is not None:
                for call in calls:
                    with contextlib.suppress(Exception):  # a failing call is the answer's problem: the verifier judges
                        environment.execute(call)
            return self.domain.verify(task, calls, [*task.messages, message], environment)
        except Exception as exc:  # a verifier that breaks on an answer scores it 0, not the run
            return Verdict("unknown", f"verifier error: {type(exc).__name__}: {exc}")


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)  # conversational completions


def reward_tasks(context: TrainContext, domain: Domain, items: Sequence[DatasetItem],
                 limit: int | None) -> dict[int, RewardTask]:
    """The snapshot's tasks, in record order, at most ``limit``."""
    from supertiny.harvest.tasks import domain_task
    from supertiny.prototype.agent import task_tools

    ids = list(dict.fromkeys(item.task_id for item in items if item.task_id is not None))[:limit]
    with context.store.session() as session:
        rows = {row.id: row for row in session.scalars(sa.select(Task).where(Task.id.in_(ids)))}
    tasks = {}
    for identifier in ids:
        if identifier in rows:
            task = domain_task(rows[identifier])
            tasks[identifier] = RewardTask(task, task_tools(domain, task))
    return tasks


def prompt_rows(tokenizer: Any, domain: Domain, tasks: dict[int, RewardTask], use_prompt: bool,
                max_length: int) -> tuple[list[dict[str, Any]], int]:
    """TRL's dataset rows (the rendered prompt text and the task it asks) and how many prompts were left out for
    being longer than ``max_length`` tokens."""
    from supertiny.prototype.agent import prompt_messages

    rows, too_long = [], 0
    for identifier, entry in tasks.items():
        messages = (prompt_messages(domain, entry.task) if use_prompt else []) + list(entry.task.messages)
        text = tokenizer.apply_chat_template(messages, tools=entry.tools or None, add_generation_prompt=True,
                                             tokenize=False)
        if len(tokenizer(text, add_special_tokens=False).input_ids) > max_length:
            too_long += 1
            continue
        rows.append({"prompt": text, "task_id": identifier})
    return rows, too_long


class GRPOTrainer(Trainer):
    name = "grpo"
    description = "group relative policy optimisation with the domain's verifier as the reward"
    config_class = GRPOConfig
    needs_domain = True

    def check(self, context: TrainContext) -> None:
        if not any(item.task_id is not None for item in context.items()):
            raise InvalidInputError(f"snapshot {context.dataset.name}@{context.dataset.version} has no record of a "
                                    f"domain task in split {context.config.split!r}",
                                    hint="grpo needs the tasks to verify answers: snapshot harvest runs")

    def resident_models(self, context: TrainContext) -> list[ModelVersion]:
        config: GRPOConfig = context.config  # type: ignore[assignment]
        return [context.student] if config.beta > 0 and not config.lora else []  # the frozen reference copy

    def train(self, context: TrainContext) -> TrainResult:
        import datasets
        import trl

        from supertiny.artifacts.hf import load_tokenizer, set_threads
        from supertiny.registry import lookup
        from supertiny.train.hf_loop import run_trainer, summarize_curve, training_arguments
        from supertiny.train.modeling import prepare_student

        config: GRPOConfig = context.config  # type: ignore[assignment]
        set_threads(config.threads)
        domain: Domain = lookup("domain", context.domain)
        student = model_ref(context.student)
        context.progress.phase(f"loading {student.name}")
        tokenizer = load_tokenizer(student)
        tokenizer.padding_side = "left"  # prompts of a generation batch end where the answers start
        tasks = reward_tasks(context, domain, context.items(), config.task_limit)
        if not tasks:
            raise InvalidInputError("none of the snapshot's tasks is in the store any more")
        rows, too_long = prompt_rows(tokenizer, domain, tasks, config.use_prompt, config.max_length)
        if not rows:
            raise InvalidInputError(f"every prompt is longer than --max-length {config.max_length} tokens")
        dtype, mixed = training_dtype(config, model_facts(student))
        model = prepare_student(student, config, dtype)
        output_dir = context.run_dir / "checkpoints"
        arguments = training_arguments(config, output_dir, mixed)
        arguments["per_device_train_batch_size"] = config.batch_size * config.group_size
        args = trl.GRPOConfig(**arguments, num_generations=config.group_size,
                              max_completion_length=config.max_new_tokens, temperature=config.temperature,
                              beta=config.beta, loss_type=config.loss_type, log_completions=False)
        reward = VerifierReward(domain, tasks, config.invalid_reward)
        trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args,
                                  train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
        compact_fused_heads(trainer, temperature=config.temperature)
        metrics = run_trainer(trainer, output_dir, context.progress)
        rewards = summarize_curve(trainer.state.log_history, "reward")
        metrics.update({"reward_first": rewards["first"], "reward_last": rewards["last"],
                        "reward_curve": rewards["curve"], "data_tasks": len(rows),
                        "data_prompts_too_long": too_long})
        return TrainResult(model=trainer.model, tokenizer=tokenizer, metrics=metrics)
