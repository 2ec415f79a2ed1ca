"""Before and after: parameters, bytes on disk, prefill / decode tokens/s and (optionally) accuracy on a
domain split for a model and what compression made of it."""

import dataclasses
from collections.abc import Callable
from typing import Any

from supertiny.errors import SupertinyError
from supertiny.store import Store

EvalProgress = Callable[[str, int, int], None]  # (model, done, total)


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    speed: bool = True
    prompt_tokens: int = 128
    new_tokens: int = 32
    eval_domain: str | None = None
    eval_split: str = "dev"
    eval_per_category: int | None = None
    eval_limit: int | None = None


def model_report(store: Store, name: str, options: ReportOptions, progress: EvalProgress | None = None) -> dict:
    """One model's row: what the registry says, plus measured speed and accuracy when asked. A failure to
    measure or evaluate is reported in the row (``speed_error`` / ``eval_error``), not raised."""
    from supertiny.models.versions import get_model_version

    row = get_model_version(store, name)
    report: dict[str, Any] = {"name": row.name, "stage": row.stage, "format": row.format, "backend": row.backend,
                              "params": row.param_count, "size_bytes": row.size_bytes}
    if options.speed:
        try:
            report.update(_speed(store, name, options))
        except SupertinyError as exc:
            report["speed_error"] = str(exc)
    if options.eval_domain:
        try:
            report.update(_accuracy(store, name, options, progress))
        except SupertinyError as exc:
            report["eval_error"] = str(exc)
    return report


def _speed(store: Store, name: str, options: ReportOptions) -> dict[str, Any]:
    from supertiny.artifacts.speed import measure_speed
    from supertiny.runtime.loading import lease_model

    with lease_model(store, name, in_process=True) as chat:  # the weights' own speed, not an engine's
        if hasattr(chat, "measure_speed"):  # a backend that runs its own network (llama.cpp) times itself
            speed = chat.measure_speed(options.prompt_tokens, options.new_tokens)
        elif chat.capabilities.token_access:
            speed = measure_speed(chat.model, chat.tokenizer, options.prompt_tokens, options.new_tokens)  # type: ignore[attr-defined]
        else:
            return {"speed_error": f"{chat.backend} models are not measured in-process"}
    return {"prefill_tok_s": round(speed.prefill_tok_s, 2), "decode_tok_s": round(speed.decode_tok_s, 2)}


def _accuracy(store: Store, name: str, options: ReportOptions, progress: EvalProgress | None) -> dict[str, Any]:
    from supertiny.eval.runner import EvalConfig, evaluate

    assert options.eval_domain is not None
    config = EvalConfig(model=name, domain=options.eval_domain, split=options.eval_split,
                        per_category=options.eval_per_category, limit=options.eval_limit)
    evaluation = evaluate(store, config, (lambda done, total: progress(name, done, total)) if progress else None)
    return {"accuracy": evaluation.accuracy, "eval_tasks": evaluation.n_tasks, "evaluation_id": evaluation.id,
            "per_category": {category: stats["accuracy"] for category, stats in evaluation.per_category.items()}}
