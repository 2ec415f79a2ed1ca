"""``supertiny demo``: the whole pipeline on the embedded default, one resumable step at a time.

models -> harvest -> snapshot -> evaluate teacher and base student -> train sft -> train kd ->
(prune + heal) -> quantize -> evaluate the trained and compressed students -> cascade policy with a
calibrated threshold -> serve and answer real requests through the OpenAI client -> report.

The teacher answers through a vLLM engine wherever one can be installed and run (:mod:`supertiny.demo.engines`),
and so do students whose evaluation is large enough to pay for starting one; the report says which engine
served each step.

Every step is a call into the same library the CLI uses. A finished step is recorded in the demo's
state file with its key (the settings it read and the keys of the steps before it) and skipped on the
next run while its key is unchanged; an interrupted one resumes through its own machinery (the
harvest's fingerprinted run, the trainers' checkpoints).
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import psutil

from supertiny.config import Settings
from supertiny.demo.engines import DemoEngines
from supertiny.demo.plan import DemoPlan
from supertiny.demo.state import DemoState
from supertiny.errors import InvalidInputError, SupertinyError
from supertiny.store.engine import Store

Echo = Callable[[str], None]

# steps that need the machine's memory to themselves: the engines started before them are stopped first (and
# started again by a later step that needs one)
MEMORY_BOUND_STEPS = frozenset({"train-sft", "train-kd", "prune", "quantize"})
# ... but the LLM's engine, which the route serves through at the end, keeps running through those that load no
# teacher where this much memory is free besides it (LoRA sft of the 0.5B takes about 6 GiB): starting it again
# costs minutes
KEEP_LLM_ENGINE_MIN_AVAILABLE = 8 * 2**30
TEACHER_LOADING_STEPS = frozenset({"train-kd", "prune"})


class Demo:
    """One run of a plan against one store."""

    def __init__(self, settings: Settings, store: Store, plan: DemoPlan, echo: Echo = click.echo):
        self.settings = settings
        self.store = store
        self.plan = plan
        self.echo = echo
        self.state = DemoState(settings.home / "demo" / plan.prefix / "state.json", plan.step_keys())
        # what answers the harvest (default: the plan's teacher through LangChain); tests script it
        self.open_teacher: Callable[[], Any] | None = None
        self.engines = DemoEngines(settings, store, plan.engine, echo, llm=plan.llm)

    @property
    def directory(self) -> Path:
        return self.state.directory

    # --- the pipeline -----------------------------------------------------------------------------------

    def steps(self) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
        """(step name, what it does, how) in order."""
        plan = self.plan
        steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("models", "pull the default student and teacher, and the BFCL data", self.models),
            ("harvest", f"teacher answers {plan.harvest_tasks} BFCL train tasks ({plan.harvest_samples} sampled "
                        f"answers each), each answer verified", self.harvest),
            ("snapshot", "the verified trajectories become an immutable training set", self.snapshot),
            ("eval-teacher", f"evaluate the teacher on {plan.eval_per_category} test tasks per category",
             lambda: self.evaluate_model(plan.llm, engine=True)),
            *([("eval-teacher-guided", "evaluate the teacher under its tools' JSON Schemas (the route's LLM tier)",
                lambda: self.evaluate_model(plan.llm, engine=True, guided=True))] if plan.guided else []),
            ("eval-base", "evaluate the untrained student", lambda: self.evaluate_model(plan.student)),
            ("train-sft", f"fine-tune the student on the snapshot ({_epochs(plan.sft_epochs)}, LoRA)", self.train_sft),
        ]
        if plan.eval_each_step:
            steps.append(("eval-sft", "evaluate the sft student", lambda: self.evaluate_model(self.model("train-sft"))))
        if plan.kd_epochs > 0:
            steps.append(("train-kd", f"distil the teacher's logits into it ({_epochs(plan.kd_epochs)})",
                          self.train_kd))
        steps.append(("eval-trained", "evaluate the trained student", lambda: self.evaluate_model(self.trained())))
        if plan.prune_to:
            steps.append(("prune", f"prune the trained student to {plan.prune_to} parameters and heal it", self.prune))
            steps.append(("eval-pruned", "evaluate the pruned student",
                          lambda: self.evaluate_model(self.model("prune"))))
        if plan.quantize:
            steps.append(("quantize", f"quantize it to {plan.quantize}", self.quantize))
            steps.append(("eval-compressed", "evaluate the compressed student",
                          lambda: self.evaluate_model(self.model("quantize"))))
        steps += [
            ("policy", "store a cascade policy and calibrate its threshold on the evaluations", self.policy),
            ("serve", f"serve it and send {plan.requests} real requests through the OpenAI client", self.serve),
        ]
        return steps

    def run(self) -> Path:
        """Run every step not yet done; write and return the report."""
        from supertiny.demo.report import write_report
        from supertiny.runtime.loading import close_models

        steps = self.steps()
        self.echo(f"supertiny demo: {len(steps)} steps, state and report in {self.directory}")
        try:
            for index, (name, description, action) in enumerate(steps, 1):
                prefix = f"[{index}/{len(steps)}] {name}: {description}"
                if self.state.done(name):
                    self.echo(f"{prefix} -- done earlier ({self.state.steps[name]['wall_s']:.0f}s), reused")
                    continue
                self.echo(prefix)
                started = time.perf_counter()
                if name in MEMORY_BOUND_STEPS:
                    # training holds the student, its gradients and often the teacher
                    self.engines.stop_all(keep=self.plan.llm)
                    if (name in TEACHER_LOADING_STEPS
                            or psutil.virtual_memory().available < KEEP_LLM_ENGINE_MIN_AVAILABLE):
                        self.engines.stop_all()
                try:
                    result = action()
                finally:
                    close_models()  # one model set in memory at a time: the 1.5B in fp32 alone is 6 GiB
                wall = time.perf_counter() - started
                self.state.record(name, result, wall)
                self.echo(f"      {name} done in {wall:.0f}s")
        finally:
            self.engines.stop_all()
        report = write_report(self)
        self.echo("")
        self.echo(report.read_text())
        return report

    # --- steps ------------------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        from supertiny.models.pull import pull_model
        from supertiny.models.versions import find_model_version
        from supertiny.registry import lookup

        pulled = {}
        for name in (self.plan.student, self.plan.teacher):
            row = find_model_version(self.store, name)
            if row is not None and Path(row.path).exists():
                pulled[name] = {"already_present": True}
                continue
            try:
                result = pull_model(self.settings, self.store, name, report=self.echo)
            except SupertinyError as exc:
                raise _offline_error(self.settings, f"the default model {name}", exc) from exc
            pulled[name] = {"already_present": result.already_present, "timings": result.timings}
        if self.plan.llm_export is not None:
            pulled[self.plan.llm] = self._export_llm(*self.plan.llm_export)
        try:
            domain = lookup("domain", self.plan.domain)
            counts = {split: sum(1 for _ in domain.tasks(split)) for split in ("train", "test")}
        except SupertinyError as exc:
            raise _offline_error(self.settings, f"the {self.plan.domain} data", exc) from exc
        return {"models": pulled, "tasks": counts}

    def _export_llm(self, algorithm: str, scheme: str) -> dict[str, Any]:
        """The teacher as the LLM the plan serves (made once): a q8_0 GGUF for llama.cpp, or a W8A8 checkpoint for
        the teacher's engine (faster than bf16 where the CPU has int8 dot products: ``DemoPlan.llm_quantize``)."""
        from supertiny.compress.gguf_config import GGUFConfig
        from supertiny.compress.quantize_config import QuantizeConfig
        from supertiny.models.versions import find_model_version
        from supertiny.progress import BarProgress
        from supertiny.runs.pipeline import compress_model

        row = find_model_version(self.store, self.plan.llm)
        if row is not None and Path(row.path).exists():
            return {"already_present": True}
        config = GGUFConfig(type=scheme) if algorithm == "gguf" else QuantizeConfig(scheme=scheme)
        progress = BarProgress()
        try:
            compress_model(self.store, self.settings, algorithm, model=self.plan.teacher, config=config,
                           name=self.plan.llm, progress=progress)
        finally:
            progress.close()
        return {"exported_from": self.plan.teacher, "compressor": algorithm, "scheme": scheme}

    def harvest(self) -> dict[str, Any]:
        """The teacher answers the train tasks freely and, with ``guided_harvest`` where it runs on an engine, once
        more under its tools' JSON Schemas: free answers decline the tasks no function fits, guided ones make the
        calls a free answer often talks itself out of, and the verifier keeps what passes from both."""
        import sqlalchemy as sa

        from supertiny.demo.plan import HARVEST_TEMPERATURE
        from supertiny.harvest.runner import HarvestConfig, decodes_guided, run_harvest
        from supertiny.prototype.teacher import open_chat_model
        from supertiny.store import Sample

        engine = self.engines.use(self.plan.llm) if self.open_teacher is None else {"served_by": "scripted"}
        if engine["served_by"] == "in-process" and self.plan.harvest_tasks * self.plan.harvest_samples > 100:
            self.echo(f"      warning: in-process the teacher answers a few requests at a time, and "
                      f"{self.plan.harvest_tasks} tasks take hours here; `make demo DEMO_ARGS=--quick` is a "
                      f"first look in minutes")
        teacher = self.open_teacher() if self.open_teacher else open_chat_model(self.store, self.plan.llm)
        decodings = [False, True] if self.plan.guided_harvest and decodes_guided(teacher) else [False]
        results = []
        for guided in decodings:
            # best-of-N where the answers are free; under the schemas one greedy answer per task
            samples = 1 if guided else self.plan.harvest_samples
            config = HarvestConfig(domain=self.plan.domain, teacher=self.plan.llm, split="train",
                                   limit=self.plan.harvest_tasks, max_new_tokens=self.plan.max_new_tokens,
                                   samples_per_task=samples, temperature=HARVEST_TEMPERATURE if samples > 1 else 0.0,
                                   guided=guided)
            with _bar("harvest guided" if guided else "harvest", "sample") as bar:
                def progress(done: int, passed: int, planned: int) -> None:
                    bar.total = planned
                    bar.n = done
                    bar.set_postfix(pass_rate=f"{passed / done:.0%}" if done else "-", refresh=False)
                    bar.refresh()

                results.append(run_harvest(self.store, config, lambda: teacher, progress))
        run_ids = [result.run_id for result in results]
        runs = [{"run_id": result.run_id, "guided": guided, **_best_of_n_by_category(self.store, result.run_id)}
                for guided, result in zip(decodings, results, strict=True)]
        with self.store.session() as session:
            tasks = session.scalars(sa.select(sa.func.count(sa.distinct(Sample.task_id)))
                                    .where(Sample.run_id.in_(run_ids), Sample.verdict == "pass")).one()
        done, passed = sum(result.done for result in results), sum(result.passed for result in results)
        if passed == 0:
            raise InvalidInputError(f"the teacher passed none of the {done} harvested answers: nothing to train on",
                                    hint="see `supertiny harvest status` for the reasons")
        return {"run_ids": run_ids, "runs": runs, "done": done, "passed": passed, "tasks_with_a_pass": tasks,
                "engine": engine, "guided": len(decodings) > 1, "pass_rate": passed / done,
                "s_per_sample": sum(result.elapsed_s for result in results)
                / max(sum(result.newly_done for result in results), 1)}

    def snapshot(self) -> dict[str, Any]:
        from supertiny.data.snapshot import SnapshotSource, create_snapshot, snapshot_items

        harvested = self.state.result("harvest")
        run_ids = tuple(harvested.get("run_ids") or [harvested["run_id"]])  # run_id: a state from an older version
        # a task both decodings answer alike would count twice
        source = SnapshotSource(runs=run_ids, verdict="pass", distinct=len(run_ids) > 1)
        dataset = create_snapshot(self.store, self.plan.snapshot, source, note=f"supertiny demo {self.plan.tag}")
        return {"ref": f"{dataset.name}@{dataset.version}", "items": len(snapshot_items(self.store, dataset))}

    def evaluate_model(self, model: str, engine: bool = False, guided: bool = False) -> dict[str, Any]:
        """Evaluate ``model``: on an engine for the teacher (``engine``) or when the evaluation is large enough
        to pay for starting one; ``guided``: under the tools' JSON Schemas, skipped where the model cannot."""
        from supertiny.demo.plan import ENGINE_MIN_TASKS
        from supertiny.eval.runner import EvalConfig, evaluate

        tasks = self.plan.eval_per_category * 5  # BFCL's five categories
        used = self.engines.use(model) if engine or tasks >= ENGINE_MIN_TASKS else {}
        if guided and used.get("served_by") == "in-process":  # no grammar there: nothing to load the model for
            why = f"{model} runs in-process ({used.get('why') or 'no engine'}), which decodes no grammar"
            self.echo(f"      skipped: {why}; the route's LLM tier decodes freely")
            return {"model": model, "skipped": why, "engine": used}
        config = EvalConfig(model=model, domain=self.plan.domain, split="test", guided=guided,
                            per_category=self.plan.eval_per_category, max_new_tokens=self.plan.max_new_tokens)
        with _bar(f"eval {model}{' guided' if guided else ''}", "task") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                evaluation = evaluate(self.store, config, progress)
            except InvalidInputError as exc:
                if not guided:
                    raise
                self.echo(f"      skipped: {exc.message}; the route's LLM tier decodes freely")
                return {"model": model, "skipped": exc.message, "engine": used}
        version = _version(self.store, model)
        return {"model": model, "evaluation_id": evaluation.id, "accuracy": evaluation.accuracy,
                "engine": {**used, "served_by": evaluation.details.get("engine")},
                "invalid_rate": evaluation.invalid_rate, "mean_latency_s": evaluation.mean_latency_s,
                "tokens_per_request": evaluation.tokens_per_request, "n": evaluation.n_tasks,
                "per_category": {category: stats["accuracy"] for category, stats in evaluation.per_category.items()},
                "per_category_n": {category: stats["n"] for category, stats in evaluation.per_category.items()},
                "params": version.param_count, "size_bytes": version.size_bytes, "stage": version.stage}

    def train_sft(self) -> dict[str, Any]:
        from supertiny.train.sft_config import SFTConfig

        config = SFTConfig(epochs=self.plan.sft_epochs, grad_accum=self.plan.grad_accum)
        return self._train("sft", self.plan.student, config, None, self.plan.model_name("train-sft"))

    def train_kd(self) -> dict[str, Any]:
        from supertiny.train.kd_config import KDConfig

        config = KDConfig(epochs=self.plan.kd_epochs, grad_accum=self.plan.grad_accum)
        return self._train("kd", self.model("train-sft"), config, self.plan.teacher, self.plan.model_name("train-kd"))

    def _train(self, algorithm: str, student: str, config: Any, teacher: str | None, name: str) -> dict[str, Any]:
        from supertiny.models.versions import find_model_version
        from supertiny.progress import BarProgress
        from supertiny.runs.pipeline import train_model

        if find_model_version(self.store, name) is None:
            progress = BarProgress()
            try:
                train_model(self.store, self.settings, algorithm, student=student, data=self.data_ref(),
                            config=config, teacher=teacher, name=name, domain=self.plan.domain, progress=progress)
            finally:
                progress.close()
        return _model_facts(self.store, name)

    def prune(self) -> dict[str, Any]:
        from supertiny.compress.prune_config import PruneConfig
        from supertiny.models.versions import find_model_version
        from supertiny.progress import BarProgress
        from supertiny.runs.pipeline import compress_model, train_model

        pruned, healed = self.plan.model_name("prune", "pruned"), self.plan.model_name("prune", "healed")
        progress = BarProgress()
        try:
            if find_model_version(self.store, pruned) is None:
                compress_model(self.store, self.settings, "prune", model=self.trained(), data=self.data_ref(),
                               config=PruneConfig(target_params=self.plan.prune_to), name=pruned,
                               domain=self.plan.domain, progress=progress)
            if find_model_version(self.store, healed) is None:
                train_model(self.store, self.settings, "heal", student=pruned, data=self.data_ref(),
                            teacher=self.trained(), name=healed, config=self.plan.heal_config(),
                            domain=self.plan.domain, progress=progress)
        finally:
            progress.close()
        return _model_facts(self.store, healed)

    def quantize(self) -> dict[str, Any]:
        from supertiny.compress.quantize_config import QuantizeConfig
        from supertiny.models.versions import find_model_version
        from supertiny.progress import BarProgress
        from supertiny.runs.pipeline import compress_model

        source = self.model("prune") if self.plan.prune_to else self.trained()
        name = self.plan.model_name("quantize", self.plan.quantize)
        if find_model_version(self.store, name) is None:
            progress = BarProgress()
            try:
                compress_model(self.store, self.settings, "quantize", model=source,
                               config=QuantizeConfig(scheme=self.plan.quantize), name=name, progress=progress)
            finally:
                progress.close()
        return _model_facts(self.store, name)

    def policy(self) -> dict[str, Any]:
        from supertiny.demo.routing import store_route

        return store_route(self)

    def serve(self) -> dict[str, Any]:
        from supertiny.demo.traffic import send_requests

        engine = self.engines.use(self.plan.llm)  # the cascade's LLM tier
        return {**send_requests(self, self.plan.requests), "engine": {**engine, "tier": "LLM tier"}}

    # --- helpers ----------------------------------------------------------------------------------------

    def data_ref(self) -> str:
        return self.state.result("snapshot")["ref"]

    def model(self, step: str) -> str:
        return self.state.result(step)["name"]

    def trained(self) -> str:
        """The student after training: kd when the plan distils, else sft."""
        return self.model(self.plan.trained_step)


def _version(store: Store, name: str) -> Any:
    from supertiny.models.versions import get_model_version

    return get_model_version(store, name)


def _epochs(count: float) -> str:
    return f"{count:g} epoch{'' if count == 1 else 's'}"


def _best_of_n_by_category(store: Store, run_id: int) -> dict[str, Any]:
    """The run's samples per task and, per category: tasks, pass@1, pass@N and the passing samples kept."""
    from supertiny.harvest.queries import run_status

    status = run_status(store, run_id)
    return {"samples_per_task": status["params"].get("samples_per_task", 1),
            "categories": {row["category"]: {"tasks": row["tasks"], "pass_at_1": row["pass_rate"],
                                             "pass_at_n": row["pass_at_n"], "kept": row["kept"]}
                           for row in status["categories"]}}


def _model_facts(store: Store, name: str) -> dict[str, Any]:
    version = _version(store, name)
    return {"name": name, "params": version.param_count, "size_bytes": version.size_bytes, "stage": version.stage,
            "metrics": version.metrics or {}}


def _offline_error(settings: Settings, what: str, cause: SupertinyError) -> SupertinyError:
    return SupertinyError(
        f"the demo needs {what}, which is not cached in {settings.home} and could not be fetched: {cause.message}",
        hint="connect this machine to PyPI (or point PIP_INDEX_URL at a mirror) and run `make demo` again; "
             "models are fetched once (about 1.6 GB) and cached, and every finished step is kept")


@contextlib.contextmanager
def _bar(description: str, unit: str) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def run_demo(settings: Settings, plan: DemoPlan, echo: Echo = click.echo) -> Path:
    """Run (or resume) the demo; returns the report's path."""
    from supertiny.store.session import open_store

    return Demo(settings, open_store(settings), plan, echo).run()
