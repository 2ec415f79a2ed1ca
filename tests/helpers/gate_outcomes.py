"""Outcomes a learned cascade gate is fitted on: made-up examples whose features decide who is right, and the
same stored as two models' evaluations."""

from supertiny.models.versions import register_model_version
from supertiny.policy.learned_gate import GateExample
from supertiny.store.tables import Evaluation


def examples(n: int = 80) -> list[GateExample]:
    """The tiny answer is right when its values are grounded; the LLM fails wherever many tools are offered."""
    rows = []
    for index in range(n):
        grounding, tools = (index % 4) / 3, 1 + 2 * (index // 4 % 2)
        flip = index % 17 == 0  # some noise: no feature separates perfectly
        rows.append(GateExample(features={"grounding": grounding, "tools": tools},
                                tiny_correct=(grounding >= 0.6) != flip, llm_correct=tools == 1))
    return rows


def _model(store, name: str) -> int:
    return register_model_version(store, name=name, stage="external", format="hf", backend="transformers",
                                  path="/nowhere").id


def evaluated_outcomes(store, with_features: bool = True) -> None:
    """Evaluations of "small" and "large" on the same 80 tasks: :func:`examples`' outcomes, the small
    model's records with their gate features (or without)."""
    rows = examples()
    small, large = _model(store, "small"), _model(store, "large")
    with store.session() as session:
        for model_id, correct in ((small, [row.tiny_correct for row in rows]),
                                  (large, [row.llm_correct for row in rows])):
            session.add(Evaluation(model_version_id=model_id, domain="bfcl", split="test", n_tasks=len(rows),
                                   accuracy=0.5, per_category={}, details={"records": [
                                       {"task": f"t{index}", "task_hash": f"h{index}", "category": "simple",
                                        "correct": right, "valid": True, "confidence": 0.9,
                                        **({"features": dict(row.features)} if with_features else {})}
                                       for index, (row, right) in enumerate(zip(rows, correct, strict=True))]}))
