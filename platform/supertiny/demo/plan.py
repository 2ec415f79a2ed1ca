"""What the demo runs: the models, the sizes of each step, and the presets that fit a time budget.

Sizes were chosen from measured speeds on the 2-core AVX2 CPU (fp32 compute, see models/hardware.py):
the 1.5B teacher takes ~31 s a harvested BFCL sample (with the ~800-token domain prompt) and ~18 s a
test task without it; the 0.5B student ~7 s a test task; a LoRA step over ~300 tokens ~8 s, ~16 s with
the teacher's logits (kd).
"""

import dataclasses
import hashlib
import json
from typing import Any

STUDENT = "qwen2.5-coder-0.5b-instruct"
TEACHER = "qwen2.5-coder-1.5b-instruct"
DOMAIN = "bfcl"
# bumped when the steps' own settings change, so a re-run trains new models instead of reusing old ones
RECIPE = 2


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """One demo run. Names are derived from ``prefix`` so a re-run finds what an earlier run made."""

    student: str = STUDENT
    teacher: str = TEACHER
    domain: str = DOMAIN
    harvest_tasks: int = 24  # training tasks the teacher answers, round-robin over the categories
    # a right BFCL answer is short; wrong ones ramble (prose, repeated calls) and cost the most CPU time
    max_new_tokens: int = 256
    eval_per_category: int = 4  # test tasks per category for each evaluation
    sft_epochs: float = 3.0
    # 0 until kd stops collapsing the student (measured: 45% -> 15% on BFCL test after one epoch); --kd-epochs 1
    kd_epochs: float = 0.0
    quantize: str = "int8"  # "" skips quantization
    prune_to: str = ""  # e.g. "0.4B": prune the trained student and heal it (not in the default budget)
    heal_epochs: float = 1.0
    requests: int = 10  # real requests sent through the server at the end
    route: str = "demo"
    prefix: str = "demo"
    eval_each_step: bool = False  # also evaluate the sft model (before kd)

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoPlan":
        """About 10 minutes on the 2-core CPU: a first look, not a measurement."""
        sizes = {"harvest_tasks": 6, "eval_per_category": 1, "requests": 5, "prefix": "demo-quick"}
        return cls(**{**sizes, **overrides})

    @property
    def tag(self) -> str:
        """``<prefix>-<digest>``: names what this plan makes, so a changed plan never reuses another's models."""
        return f"{self.prefix}-{self.digest()[:6]}"

    @property
    def snapshot(self) -> str:
        return f"{self.tag}-{self.domain}"

    def model_name(self, step: str) -> str:
        return f"{self.tag}-{step}"

    def digest(self) -> str:
        """Identifies the plan in the demo's state file: a changed plan starts its steps afresh."""
        sizes = {key: value for key, value in dataclasses.asdict(self).items() if key not in ("requests", "route")}
        sizes["recipe"] = RECIPE
        payload = json.dumps(sizes, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
