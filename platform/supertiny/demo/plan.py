"""What the demo runs: the models, the sizes of each step, and the presets that fit a time budget (45 minutes on a
2-core CPU for the default run, install included; 10 for ``--quick``). The teacher runs on a vLLM engine where
one can run (``engine``), every other model in-process unless a step is large enough to pay for an engine.
"""

import dataclasses
import hashlib
import importlib.util
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supertiny.train.heal_config import HealConfig

STUDENT = "qwen2.5-coder-0.5b-instruct"
TEACHER = "qwen2.5-coder-1.5b-instruct"
DOMAIN = "bfcl"
LLM_RUNTIMES = ("auto", "llama-cpp", "transformers")
LLM_SCHEMES = ("auto", "w8a8", "none")
ENGINE_CHOICES = ("auto", "off")
# a student's evaluation goes to an engine from this many tasks on: starting one costs a minute or two
ENGINE_MIN_TASKS = 50
# bumped when the steps' own settings change, so a re-run trains new models instead of reusing old ones
RECIPE = 9
# the free harvest's sampling temperature when it draws several answers per task (best-of-N)
HARVEST_TEMPERATURE = 0.7


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """One demo run. Names are derived from ``prefix`` so a re-run finds what an earlier run made."""

    student: str = STUDENT
    teacher: str = TEACHER
    domain: str = DOMAIN
    harvest_tasks: int = 200  # training tasks the teacher answers, round-robin over the categories
    # answers per task, sampled (best-of-N: the verifier keeps what passes); a task's samples share its prompt's
    # prefill, which is most of a CPU's time, so a second sample costs a fraction of the first
    harvest_samples: int = 2
    # the teacher also answers every train task once under the tools' JSON Schemas, and the snapshot takes the
    # verified answers of both: guided answers make the calls a free answer often talks itself out of. Off by
    # default: it doubles the harvest's time
    guided_harvest: bool = False
    # a right BFCL answer is short; wrong ones ramble (prose, repeated calls) and cost the most CPU time
    max_new_tokens: int = 256
    eval_per_category: int = 20  # test tasks per category for each evaluation
    sft_epochs: float = 1.0
    # records per optimizer step in sft and kd: a few hundred records make a few dozen steps
    grad_accum: int = 8
    # logit distillation after sft (0: skip); off by default (see the measurements archive)
    kd_epochs: float = 0.0
    # W8A8 int8 (weights and activations), which the student's engine serves; "int8"/"int4": weight-only, in-process
    # only; "" skips quantization
    quantize: str = "w8a8"
    prune_to: str = ""  # e.g. "0.4B": prune the trained student and heal it (not in the default budget)
    heal_epochs: float = 1.0
    requests: int = 8  # real requests sent through the server at the end
    route: str = "demo"
    # what runs the teacher where it answers (harvest, its evaluation, the cascade's LLM tier): torch, or llama.cpp
    # on a q8_0 GGUF export ("auto": when llama-cpp-python is installed); kd always reads the HF weights. torch by
    # default: llama.cpp decodes faster on a CPU but prefills slower, and BFCL prompts are long
    llm_runtime: str = "transformers"
    # the teacher answers as its W8A8 export (int8 weights and activations, made once in the models step), which a
    # CPU engine serves faster than bf16 where the CPU has int8 dot-product instructions (VNNI, AMX) and slower where
    # it has not (AVX2 alone); "auto": W8A8 where it has them. "" answers as pulled. Not with llama.cpp, whose LLM is
    # already a q8_0 export
    llm_quantize: str = "auto"
    prefix: str = "demo"
    eval_each_step: bool = False  # also evaluate the sft model (before kd)
    # "auto": the teacher (and students evaluated on enough tasks) answer through a vLLM engine where one can be
    # installed and run here; "off": every model in-process
    engine: str = "auto"
    # where the teacher runs on an engine, the route's LLM tier answers under the tools' JSON Schemas (evaluated so,
    # to calibrate the cascade on)
    guided: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoPlan":
        """A first look within 10 minutes on a 2-core CPU, not a measurement: one harvested task per category
        (the teacher's answers to the multi-call categories are the longest to generate)."""
        # its own route too: a first look must not replace the route a full run stored
        # a handful of records: several epochs of one record per step, or the run is a single update
        sizes = {"harvest_tasks": 5, "eval_per_category": 1, "sft_epochs": 3.0, "grad_accum": 1, "requests": 4,
                 "prefix": "demo-quick", "route": "demo-quick"}
        return cls(**{**sizes, **overrides})

    @property
    def tag(self) -> str:
        """``<prefix>-<digest>``: names this plan in the report."""
        return f"{self.prefix}-{self.digest()[:6]}"

    def digest(self) -> str:
        """Identifies the whole plan (what requests are sent to which route changes no model)."""
        sizes = {key: value for key, value in dataclasses.asdict(self).items()
                 if key not in ("requests", "route", "engine")}
        return _digest({**sizes, "llm": self.llm, "recipe": RECIPE})

    @property
    def llm_export(self) -> tuple[str, str] | None:
        """How the LLM is made from the teacher, as (compressor, scheme): a q8_0 GGUF for llama.cpp, or the teacher's
        W8A8 checkpoint; None where the teacher answers as pulled."""
        runtime = self.llm_runtime
        if runtime == "auto":
            runtime = "llama-cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
        if runtime == "llama-cpp":
            return ("gguf", "q8_0")
        scheme = self.llm_quantize
        if scheme == "auto":
            from supertiny.artifacts.hardware import cpu_has_int8_dot_product

            scheme = "w8a8" if cpu_has_int8_dot_product() else ""
        return ("quantize", scheme) if scheme else None

    @property
    def llm(self) -> str:
        """The registered model that answers as the teacher: the pulled teacher, or its export (``llm_export``)."""
        export = self.llm_export
        if export is None:
            return self.teacher
        return f"{self.teacher}-gguf-{export[1]}" if export[0] == "gguf" else f"{self.teacher}-{export[1]}"

    def heal_config(self) -> "HealConfig":
        """How the prune step heals: healing's defaults for ``heal_epochs``."""
        from supertiny.train.heal_config import HealConfig

        return HealConfig(epochs=self.heal_epochs)

    @property
    def trained_step(self) -> str:
        """The step whose model is "the trained student": kd when the plan distils, else sft."""
        return "train-kd" if self.kd_epochs > 0 else "train-sft"

    def step_keys(self) -> dict[str, str]:
        """Each step's identity: the settings it reads and the keys of the steps it builds on. A changed
        plan re-runs a step only when its key changed, so ``--kd-epochs 1`` after a run without kd
        reuses the harvest, the snapshot, the base evaluations and the sft student."""
        evaluation = {"domain": self.domain, "per_category": self.eval_per_category,
                      "max_new_tokens": self.max_new_tokens}
        keys: dict[str, str] = {}
        keys["models"] = _digest({"student": self.student, "teacher": self.teacher, "llm": self.llm,
                                  "domain": self.domain})
        keys["harvest"] = _digest({"teacher": self.llm, "domain": self.domain, "tasks": self.harvest_tasks,
                                   "samples": self.harvest_samples, "max_new_tokens": self.max_new_tokens,
                                   **({"guided": True} if self.guided_harvest and self.engine != "off" else {})})
        keys["snapshot"] = _digest({"harvest": keys["harvest"]})
        keys["eval-teacher"] = _digest({"model": self.llm, **evaluation})
        keys["eval-teacher-guided"] = _digest({"model": self.llm, "guided": True, **evaluation})
        keys["eval-base"] = _digest({"model": self.student, **evaluation})
        keys["train-sft"] = _digest({"data": keys["snapshot"], "student": self.student, "epochs": self.sft_epochs,
                                     "grad_accum": self.grad_accum, "recipe": RECIPE})
        keys["eval-sft"] = _digest({"model": keys["train-sft"], **evaluation})
        keys["train-kd"] = _digest({"student": keys["train-sft"], "teacher": self.teacher, "epochs": self.kd_epochs,
                                    "grad_accum": self.grad_accum, "recipe": RECIPE})
        trained = keys[self.trained_step]
        keys["eval-trained"] = _digest({"model": trained, **evaluation})
        keys["prune"] = _digest({"model": trained, "to": self.prune_to, "heal": dataclasses.asdict(self.heal_config()),
                                 "recipe": RECIPE})
        keys["eval-pruned"] = _digest({"model": keys["prune"], **evaluation})
        keys["quantize"] = _digest({"model": keys["prune"] if self.prune_to else trained, "scheme": self.quantize})
        keys["eval-compressed"] = _digest({"model": keys["quantize"], **evaluation})
        evaluated = ("eval-teacher", "eval-teacher-guided", "eval-trained", "eval-pruned", "eval-compressed")
        keys["policy"] = _digest({"route": self.route, "llm": self.llm, "evaluations": [
            keys[step] for step in evaluated if (self.prune_to or step != "eval-pruned")
            and (self.guided or step != "eval-teacher-guided")]})
        keys["serve"] = _digest({"policy": keys["policy"], "requests": self.requests})
        return keys

    @property
    def snapshot(self) -> str:
        return f"{self.prefix}-{self.step_keys()['snapshot'][:6]}-{self.domain}"

    def model_name(self, step: str, what: str | None = None) -> str:
        """The name of the model ``step`` makes (``what`` it is, default the step's name): changes with the
        step's key."""
        return f"{self.prefix}-{self.step_keys()[step][:6]}-{what or step.removeprefix('train-')}"


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
