"""Stage 1 harvesting: verified samples in the store, resume without loss or duplicates, dedup,
failures recorded as failed samples, multi-step trajectories."""

import _thread
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REPO_ROOT
from helpers import toy_domain
from helpers.scripted_chat import ScriptedChatModel, call, weather_oracle
from langchain_core.messages import AIMessage, ToolMessage
from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.harvest.queries import close_orphaned_runs, list_runs, run_status
from supertiny.harvest.runner import HarvestConfig, run_harvest
from supertiny.processes import this_host
from supertiny.store import HarvestRun, Sample, Task


@pytest.fixture
def toy(register_plugin):
    register_plugin(toy_domain, name="toy-domains")
    return toy_domain.ToyWeather()


def _distinct_train_tasks(domain) -> int:
    return len({task.content_hash() for task in domain.tasks("train")})


def _samples(store, run_id):
    with store.session() as session:
        return session.scalars(sa.select(Sample).where(Sample.run_id == run_id)).all()


def test_harvest_writes_verified_samples_and_dedups_tasks(store, toy):
    teacher = ScriptedChatModel(respond=weather_oracle)
    result = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="oracle"), lambda: teacher)
    distinct = _distinct_train_tasks(toy)
    assert distinct < sum(1 for _ in toy.tasks("train"))  # the domain repeats tasks on purpose
    assert result.done == result.planned == result.passed == distinct
    samples = _samples(store, result.run_id)
    assert len(samples) == distinct
    assert all(sample.verdict == "pass" and sample.completion_tokens == 5 for sample in samples)
    assert samples[0].trajectory[0]["role"] == "user"  # the system prompt steers, it is not data
    assert samples[0].trajectory[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    with store.session() as session:
        assert session.scalar(sa.select(sa.func.count(Task.id))) == distinct


def test_interrupted_run_resumes_with_no_lost_and_no_duplicated_samples(store, toy):
    answered = []

    def flaky(messages, kwargs):
        if len(answered) == 5:
            raise KeyboardInterrupt
        answered.append(1)
        return weather_oracle(messages, kwargs)

    config = HarvestConfig(domain="toy-weather", teacher="oracle", limit=8)
    with pytest.raises(KeyboardInterrupt):
        run_harvest(store, config, lambda: ScriptedChatModel(respond=flaky))
    with store.session() as session:
        run = session.scalars(sa.select(HarvestRun)).one()
        assert run.status == "interrupted" and run.n_done == 5
    result = run_harvest(store, config, lambda: ScriptedChatModel(respond=weather_oracle))
    assert result.run_id == run.id and result.newly_done == 3
    samples = _samples(store, run.id)
    assert len(samples) == 8 == len({(s.task_id, s.sample_index) for s in samples})
    again = run_harvest(store, config, lambda: pytest.fail("nothing left to do: the teacher is not opened"))
    assert again.newly_done == 0 and again.done == 8


def test_an_answer_that_lands_after_an_interrupt_is_not_written_into_the_closed_run(store, toy):
    """Ctrl-C abandons the tasks in flight; their answers, arriving after the run was closed, must not change it."""
    release, calls, lock = threading.Event(), [], threading.Lock()

    def interrupted_while_both_answer(messages, kwargs):
        with lock:
            calls.append(threading.current_thread())
            if len(calls) == 2:  # both tasks in flight: the main thread is interrupted, as by Ctrl-C
                _thread.interrupt_main()
        release.wait(30)
        return weather_oracle(messages, kwargs)

    config = HarvestConfig(domain="toy-weather", teacher="oracle", limit=4, concurrency=2)
    with pytest.raises(KeyboardInterrupt):
        run_harvest(store, config, lambda: ScriptedChatModel(respond=interrupted_while_both_answer))
    release.set()
    for worker in calls:  # the abandoned workers, which try to write once released
        worker.join(30)
    with store.session() as session:
        run = session.scalars(sa.select(HarvestRun)).one()
    assert run.status == "interrupted" and run.n_done == 0 and _samples(store, run.id) == []


def _harvest_script(tmp_path, store_url: str) -> Path:
    """A harvest of 10 toy tasks in its own process, as the CLI runs one (SIGTERM stops it as Ctrl-C does);
    its argument is the teacher's delay per answer in seconds."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO_ROOT / 'tests')!r}, {str(REPO_ROOT / 'platform')!r}]
        from helpers import toy_domain
        from helpers.scripted_chat import ScriptedChatModel, weather_oracle
        from supertiny.cli import stop_on_sigterm
        from supertiny.plugins import pm, load_plugins
        from supertiny.harvest.runner import HarvestConfig, run_harvest
        from supertiny.store import Store
        stop_on_sigterm(); load_plugins(); pm.register(toy_domain)
        teacher = ScriptedChatModel(respond=weather_oracle, delay_s=float(sys.argv[1]))
        config = HarvestConfig(domain="toy-weather", teacher="oracle", limit=10, concurrency=2)
        run_harvest(Store({store_url!r}), config, lambda: teacher)
    """)
    path = tmp_path / "harvest.py"
    path.write_text(script)
    return path


def _wait_for_samples(store, at_least: int, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with store.session() as session:
            if session.scalar(sa.select(sa.func.count(Sample.id))) >= at_least:
                return
        time.sleep(0.05)


def test_kill_9_mid_run_then_rerun_ends_with_exactly_the_planned_samples(sqlite_store, tmp_path):
    script = _harvest_script(tmp_path, sqlite_store.url)
    process = subprocess.Popen([sys.executable, str(script), "0.3"])
    _wait_for_samples(sqlite_store, 3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with sqlite_store.session() as session:
        written = session.scalar(sa.select(sa.func.count(Sample.id)))
        assert 3 <= written < 10
    [killed] = list_runs(sqlite_store)
    assert killed["status"] == "interrupted" and f"pid {process.pid}" in killed["error"]
    subprocess.run([sys.executable, str(script), "0"], check=True)
    with sqlite_store.session() as session:
        pairs = session.execute(sa.select(Sample.task_id, Sample.sample_index)).all()
        run = session.scalars(sa.select(HarvestRun)).one()
    assert len(pairs) == 10 == len(set(pairs))
    assert run.status == "completed" and run.n_done == 10


def test_sigterm_mid_run_records_the_run_as_interrupted(sqlite_store, tmp_path):
    process = subprocess.Popen([sys.executable, str(_harvest_script(tmp_path, sqlite_store.url)), "0.3"],
                               stderr=subprocess.PIPE, text=True)
    _wait_for_samples(sqlite_store, 3)
    process.terminate()
    _, errors = process.communicate(timeout=30)
    assert process.returncode != 0 and "KeyboardInterrupt" in errors
    with sqlite_store.session() as session:
        run = session.scalars(sa.select(HarvestRun)).one()
        written = session.scalar(sa.select(sa.func.count(Sample.id)))
    assert run.status == "interrupted" and 3 <= run.n_done == written < 10


def test_sigterm_does_not_wait_for_a_slow_teacher_to_finish_its_answers(sqlite_store, tmp_path):
    process = subprocess.Popen([sys.executable, str(_harvest_script(tmp_path, sqlite_store.url)), "120"],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        with sqlite_store.session() as session:
            if session.scalar(sa.select(sa.func.count(HarvestRun.id))):
                break
        time.sleep(0.05)
    time.sleep(1)  # the two workers are inside the teacher's 120-second answers
    process.terminate()
    process.communicate(timeout=30)
    with sqlite_store.session() as session:
        run = session.scalars(sa.select(HarvestRun)).one()
    assert process.returncode != 0 and run.status == "interrupted" and run.n_done == 0


def test_a_run_is_closed_as_interrupted_only_when_its_process_on_this_host_is_gone(store):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owners = {"live": (this_host(), sleeper.pid), "gone": (this_host(), gone.pid),
              "elsewhere": ("another-host", gone.pid), "this process": (this_host(), os.getpid())}
    try:
        with store.session() as session:
            for name, (host, pid) in owners.items():
                session.add(HarvestRun(fingerprint=name, domain="toy-weather", teacher=name, params={},
                                       status="running", host=host, pid=pid))
        assert len(close_orphaned_runs(store)) == 1
        statuses = {run["teacher"]: run["status"] for run in list_runs(store)}
        assert statuses == {"live": "running", "gone": "interrupted", "elsewhere": "running",
                            "this process": "running"}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_teacher_errors_and_garbage_become_failed_samples_and_the_run_goes_on(store, toy):
    def unreliable(messages, kwargs):
        question = messages[-1].content
        if "Paris" in question:
            raise TimeoutError("teacher timed out after 30s")
        if "Oslo" in question:
            return AIMessage(content="{{{ not json at all")
        return weather_oracle(messages, kwargs)

    result = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="flaky"),
                         lambda: ScriptedChatModel(respond=unreliable))
    samples = _samples(store, result.run_id)
    assert len(samples) == result.planned
    timed_out = [s for s in samples if s.error and "timed out" in s.error]
    assert timed_out and all(s.verdict == "fail" and "TimeoutError" in s.verdict_detail for s in timed_out)
    garbage = [s for s in samples if s.trajectory[-1].get("content") == "{{{ not json at all"]
    assert garbage and all(s.verdict == "fail" for s in garbage)
    assert result.passed == len(samples) - len(timed_out) - len(garbage)


def test_multi_step_trajectory_executes_tools_and_feeds_results_back(store, register_plugin):
    register_plugin(toy_domain, name="toy-domains")

    def two_steps(messages, kwargs):
        last = messages[-1]
        city = messages[0].content.split(" in ")[-1].rstrip(".") if messages[0].type == "human" else None
        if isinstance(last, ToolMessage) and '"temperature"' in last.content:
            return call("set_alert", city=last.content.split('"city": "')[1].split('"')[0], above=36.0)
        if isinstance(last, ToolMessage):
            return AIMessage(content="Done: alert set.")
        return call("get_weather", city=city or last.content.split(" in ")[-1].rstrip("."))

    result = run_harvest(store, HarvestConfig(domain="toy-alerts", teacher="agent"),
                         lambda: ScriptedChatModel(respond=two_steps))
    assert result.passed == result.done > 0
    trajectory = _samples(store, result.run_id)[0].trajectory
    assert [m["role"] for m in trajectory] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert trajectory[-1]["content"] == "Done: alert set."


def test_status_reports_pass_rate_per_category(store, toy):
    teacher = ScriptedChatModel(respond=lambda m, k: call("get_weather", city="Nowhere")
                                if "fahrenheit" in m[-1].content else weather_oracle(m, k))
    result = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="half"), lambda: teacher)
    by_category = {row["category"]: row for row in run_status(store, result.run_id)["categories"]}
    assert by_category["celsius"]["pass_rate"] == 1.0
    assert by_category["fahrenheit"]["pass_rate"] == 0.0


def test_unknown_domain_and_bad_parameters_are_clear_errors(store, toy):
    with pytest.raises(NotFoundError, match="unknown domain 'toy-wether'"):
        run_harvest(store, HarvestConfig(domain="toy-wether", teacher="x"), lambda: None)
    with pytest.raises(InvalidInputError, match="temperature"):
        run_harvest(store, HarvestConfig(domain="toy-weather", teacher="x", samples_per_task=4), lambda: None)


def test_domain_with_an_invalid_tool_schema_is_refused_before_any_work(store, register_plugin):
    import supertiny

    class Broken(toy_domain.ToyWeather):
        name = "broken-schema"

        def tasks(self, split):
            for task in super().tasks(split):
                task.tools = [{"type": "function", "function": {
                    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"enum": 5}}}}}]
                yield task

    class Plugin:
        @supertiny.hookimpl
        def register_domains(self, register):
            register(Broken())

    register_plugin(Plugin())
    with pytest.raises(InvalidInputError, match="tool 'get_weather' has an invalid schema"):
        run_harvest(store, HarvestConfig(domain="broken-schema", teacher="x"), lambda: None)
    with store.session() as session:
        assert session.scalar(sa.select(sa.func.count(HarvestRun.id))) == 0


def test_limit_takes_tasks_round_robin_over_categories_and_status_counts_running_runs(store, toy):
    result = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="oracle", limit=4),
                         lambda: ScriptedChatModel(respond=weather_oracle))
    status = run_status(store, result.run_id)
    assert {row["category"]: row["samples"] for row in status["categories"]} == {"celsius": 2, "fahrenheit": 2}
    with store.session() as session:  # a run killed with -9 never updates its row: counts come from samples
        session.get(HarvestRun, result.run_id).n_done = 0
    assert run_status(store, result.run_id)["done"] == 4


def test_a_tasks_samples_come_from_one_request_and_many_tasks_are_in_flight(store, toy):
    import threading

    from langchain_core.outputs import ChatGeneration, ChatResult

    seen, in_flight, lock = [], [0, 0], threading.Lock()

    class SamplingTeacher(ScriptedChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
                seen.append(kwargs.get("n", 1))
            time.sleep(0.05)
            with lock:
                in_flight[0] -= 1
            answers = [self.respond(messages, kwargs) for _ in range(kwargs.get("n", 1))]
            return ChatResult(generations=[ChatGeneration(message=answer) for answer in answers])

    config = HarvestConfig(domain="toy-weather", teacher="oracle", samples_per_task=3, temperature=0.7, limit=6,
                           concurrency=3)
    result = run_harvest(store, config, lambda: SamplingTeacher(respond=weather_oracle))
    assert seen == [3] * 6  # one request per task, all of its samples
    assert in_flight[1] == 3  # three tasks at once
    samples = _samples(store, result.run_id)
    assert result.done == 18 == len({(s.task_id, s.sample_index) for s in samples})


def test_a_teacher_outage_ends_the_run_without_recording_it_as_answers_and_the_rerun_resumes(store, toy):
    from supertiny.errors import EngineUnavailableError

    answered = []

    def dies_after_four(messages, kwargs):
        if len(answered) >= 4:
            raise EngineUnavailableError("the engine serving oracle at http://127.0.0.1:1/v1 is not answering")
        answered.append(1)
        return weather_oracle(messages, kwargs)

    config = HarvestConfig(domain="toy-weather", teacher="oracle", limit=8, concurrency=1)
    with pytest.raises(EngineUnavailableError):
        run_harvest(store, config, lambda: ScriptedChatModel(respond=dies_after_four))
    with store.session() as session:
        run = session.scalars(sa.select(HarvestRun)).one()
        assert run.status == "failed" and "not answering" in run.error and run.n_done == 4
    assert all(sample.verdict == "pass" for sample in _samples(store, run.id))  # no outage became a failed answer
    result = run_harvest(store, config, lambda: ScriptedChatModel(respond=weather_oracle))
    assert result.run_id == run.id and result.newly_done == 4 and result.done == 8


def test_status_reports_pass_at_1_pass_at_n_and_the_kept_records_per_category(store, toy):
    from helpers.training import alternating

    config = HarvestConfig(domain="toy-weather", teacher="half-right", limit=4, samples_per_task=2, temperature=0.7)
    run_harvest(store, config, lambda: ScriptedChatModel(respond=alternating()))
    status = run_status(store, 1)
    assert (status["tasks"], status["tasks_passed"], status["kept"]) == (4, 4, 4)
    assert status["pass_rate"] == 0.5 and status["pass_at_n"] == 1.0
    low, high = status["pass_at_n_interval"]
    assert 0.4 < low < 1.0 == high
    assert sum(row["tasks"] for row in status["categories"]) == 4
    assert all(row["pass_at_n"] == 1.0 and row["kept"] == row["tasks"] for row in status["categories"])


def test_examples_from_an_earlier_runs_verified_answers_steer_the_teacher(store, toy):
    from helpers.training import alternating

    first = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="half-right", limit=6, samples_per_task=2,
                                             temperature=0.7), lambda: ScriptedChatModel(respond=alternating()))
    prompts = []

    def recording(messages, kwargs):
        prompts.append(messages)
        return weather_oracle(messages, kwargs)

    config = HarvestConfig(domain="toy-weather", teacher="oracle", limit=6, examples_from=first.run_id, examples=2)
    second = run_harvest(store, config, lambda: ScriptedChatModel(respond=recording))
    assert second.passed == 6 and len(prompts) == 6
    for messages in prompts:
        question = messages[-1].content
        example_questions = [m.content for m in messages[:-1] if m.type == "human"]
        assert len(example_questions) == 2 and all(q.startswith("(Example. Functions: get_weather(city, unit))\n")
                                                   for q in example_questions)
        assert all(not q.endswith(question) for q in example_questions)  # never the task's own answer
        assert [m.type for m in messages[1:-1]] == ["human", "ai", "tool"] * 2
        assert messages[0].type == "system"
    # the examples are part of the run's identity: the same command resumes, other examples are another run
    assert run_harvest(store, config, lambda: ScriptedChatModel(respond=recording)).run_id == second.run_id
    other = dataclasses.replace(config, examples=1)
    assert run_harvest(store, other, lambda: ScriptedChatModel(respond=recording)).run_id != second.run_id


def test_examples_from_a_run_without_a_passing_answer_are_refused(store, toy):
    from helpers.training import wrong_answer

    first = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="wrong", limit=2),
                        lambda: ScriptedChatModel(respond=wrong_answer))
    with pytest.raises(InvalidInputError, match=f"harvest run {first.run_id} has no passing sample"):
        run_harvest(store, HarvestConfig(domain="toy-weather", teacher="x", limit=2, examples_from=first.run_id),
                    lambda: ScriptedChatModel(respond=weather_oracle))
    with pytest.raises(InvalidInputError, match="cannot go with --no-prompt"):
        HarvestConfig(domain="toy-weather", teacher="x", examples_from=1, use_prompt=False).validate()


def _log_requests(store, route, questions):
    import datetime as dt

    from supertiny.store import RequestLog

    with store.session() as session:
        for index, question in enumerate(questions):
            request = {"model": route, "messages": [{"role": "user", "content": question}],
                       "tools": [toy_domain.WEATHER_TOOL]}
            session.add(RequestLog(request_id=f"{route}-{index}", created_at=dt.datetime.now(dt.UTC), route=route,
                                   request=request, response={"choices": []}, status=200))
        session.add(RequestLog(request_id=f"{route}-failed", created_at=dt.datetime.now(dt.UTC), route=route,
                               request={"messages": [{"role": "user", "content": "x"}]}, status=400))


def test_logged_traffic_is_harvested_and_judged_by_agreement_between_samples(store, toy):
    import collections

    _log_requests(store, "prod", ["Weather in Oslo in celsius?", "Weather in Lima in celsius?",
                                  "Weather in Paris in celsius?"])
    asked = collections.Counter()
    scripts = {"Oslo": [True] * 4, "Lima": [True, False, True, False], "Paris": [True, True, False, True]}

    def teacher(messages, kwargs):
        city = messages[-1].content.split(" in ")[1]
        right = scripts[city][asked[city] % 4]
        asked[city] += 1
        return call("get_weather", city=city if right else "Atlantis", unit="celsius")

    config = HarvestConfig(domain="logs:prod", teacher="t", samples_per_task=4, temperature=0.7, agreement=0.75,
                           concurrency=1)
    result = run_harvest(store, config, lambda: ScriptedChatModel(respond=teacher))
    assert (result.done, result.passed) == (12, 7)
    with store.session() as session:
        rows = session.execute(sa.select(Task.external_id, Sample.verdict, Sample.verdict_detail)
                               .join(Task, Task.id == Sample.task_id).order_by(Task.id, Sample.sample_index)).all()
    verdicts = collections.defaultdict(list)
    for request_id, verdict, _ in rows:
        verdicts[request_id].append(verdict)
    assert verdicts["prod-0"] == ["pass"] * 4
    assert verdicts["prod-1"] == ["unknown"] * 4  # 2 against 2: no answer reaches 75%
    assert verdicts["prod-2"] == ["pass", "pass", "fail", "pass"]
    assert any("agreed by 3 of 4 samples" in detail for *_, detail in rows)
    assert "prod-failed" not in verdicts


def test_agreement_and_logs_bad_input(store, toy):
    with pytest.raises(InvalidInputError, match="--agreement needs --samples-per-task of at least 2"):
        HarvestConfig(domain="logs:prod", teacher="t", agreement=0.75).validate()
    with pytest.raises(InvalidInputError, match="above 0, at most 1"):
        HarvestConfig(domain="logs:prod", teacher="t", agreement=1.5, samples_per_task=2, temperature=0.5).validate()
    with pytest.raises(InvalidInputError, match="route 'empty' has no logged request with tools"):
        run_harvest(store, HarvestConfig(domain="logs:empty", teacher="t"),
                    lambda: ScriptedChatModel(respond=weather_oracle))


def test_a_task_waits_for_its_answer_as_long_as_the_harvest_timeout_and_no_other_teacher_is_given_one(store, toy):
    from helpers.chat_models import ScriptedModel
    from supertiny.models.langchain_adapter import SupertinyChatModel

    slow = ScriptedModel("slow", text="No function fits.", delay_s=0.3)  # past 0.1 s, well within 5 s
    config = HarvestConfig(domain="toy-weather", teacher="slow", limit=2, timeout_s=0.1)
    result = run_harvest(store, config, lambda: SupertinyChatModel(model=slow))
    assert all("did not answer within 0.1s" in sample.verdict_detail for sample in _samples(store, result.run_id))

    assert dataclasses.replace(config, timeout_s=5.0).fingerprint() == config.fingerprint()  # the same run
    patient = dataclasses.replace(config, limit=3, timeout_s=5.0)
    result = run_harvest(store, patient, lambda: SupertinyChatModel(model=slow))
    assert result.done == 3 and not any("did not answer" in sample.verdict_detail
                                        for sample in _samples(store, result.run_id))

    seen: list[dict] = []

    def oracle(messages, kwargs):
        seen.append(kwargs)
        return weather_oracle(messages, kwargs)

    run_harvest(store, dataclasses.replace(config, teacher="oracle"), lambda: ScriptedChatModel(respond=oracle))
    assert seen and not any("timeout_s" in kwargs for kwargs in seen)  # e.g. ChatOpenAI would refuse it

    with pytest.raises(InvalidInputError, match="--timeout-s"):
        run_harvest(store, dataclasses.replace(config, timeout_s=0), lambda: ScriptedChatModel(respond=oracle))
