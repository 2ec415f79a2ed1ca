"""What every trainer built on the Hugging Face ``Trainer`` (TRL's included) shares: the arguments made
from a :class:`TrainConfig`, progress with the loss, resuming from the last checkpoint of a directory,
and the metrics summary written to the model registry."""

import time
from pathlib import Path
from typing import Any

from supertiny.progress import Progress
from supertiny.train.train_config import TrainConfig

CURVE_POINTS = 50
SHOWN_LOGS = ("loss", "reward")  # logged values shown beside the progress bar


def training_arguments(config: TrainConfig, output_dir: Path, mixed_bf16: bool) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments`` (and TRL's configs, which extend it)."""
    import dataclasses

    import torch
    from transformers import TrainingArguments

    warmup: float = config.warmup if config.warmup < 1 else int(config.warmup)
    # the model is prepared with or without activation checkpointing before the trainer sees it; the
    # trainer's own flag (TRL turns it on by default) would re-enable it. Renamed in transformers 5.
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {
        checkpointing: False,
        "output_dir": str(output_dir),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.resolved_learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": warmup,
        "weight_decay": config.weight_decay,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": mixed_bf16,
        "fp16": False,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
    }


def progress_callback(progress: Progress, description: str) -> Any:
    """A ``TrainerCallback`` that reports each optimizer step and the latest loss to ``progress``."""
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        def __init__(self) -> None:
            self.shown: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            progress.phase(description, state.max_steps)
            progress.update(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {key: float(logs[key]) for key in SHOWN_LOGS if key in (logs or {})}
            if shown:
                self.shown.update(shown)
                progress.update(state.global_step, **self.info())

        def on_step_end(self, args, state, control, **kwargs):
            progress.update(state.global_step, **self.info())

        def info(self) -> dict[str, str]:
            return {key: f"{value:.4f}" for key, value in self.shown.items()}

    return ReportProgress()


def run_trainer(trainer: Any, output_dir: Path, progress: Progress, description: str = "training") -> dict[str, Any]:
    """Train, resuming from the last checkpoint in ``output_dir`` when there is one; the metrics summary."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress_callback(progress, description))
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    metrics = summarize_log(trainer.state.log_history)
    metrics.update({
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 3),
        "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        "train_wall_s": round(time.perf_counter() - started, 2),
        "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else None,
    })
    return metrics


def summarize_curve(log_history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """First, last and lowest value of a logged ``key`` and a curve of at most ``CURVE_POINTS`` (step, value)
    points."""
    points = [(int(entry["step"]), float(entry[key])) for entry in log_history if key in entry]
    if not points:
        return {"first": None, "last": None, "min": None, "curve": []}
    stride = max(1, -(-len(points) // CURVE_POINTS))
    curve = points[::stride]
    if curve[-1] != points[-1]:
        curve.append(points[-1])
    return {"first": round(points[0][1], 5), "last": round(points[-1][1], 5),
            "min": round(min(value for _, value in points), 5),
            "curve": [[step, round(value, 5)] for step, value in curve]}


def summarize_log(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The loss's first, last and lowest value and its curve (see :func:`summarize_curve`)."""
    return {f"loss_{name}": value for name, value in summarize_curve(log_history, "loss").items()}


def remove_checkpoints(run_dir: Path) -> None:
    """Delete every ``checkpoints`` directory of a finished run: they only serve resuming (the registered
    model is what remains; ``run.json`` and the sampling records stay)."""
    import shutil

    for directory in sorted(run_dir.rglob("checkpoints"), reverse=True):
        if directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
