"""The model cache: least-recently-used eviction within a memory budget, leases that pin models in use, the
budget's configuration, and its users (open_model, the model pool, the router, the evaluator)."""

import concurrent.futures
import logging
import random
import time
import types

import pytest
from click.testing import CliRunner
from helpers import toy_domain
from helpers.chat_models import ScriptedModel
from helpers.sized_models import Opener, SizedBackend, SizedModel
from supertiny import hookimpl
from supertiny.cli import cli
from supertiny.config import Settings
from supertiny.errors import ConfigError
from supertiny.models.backend import Capabilities
from supertiny.models.versions import register_model_version
from supertiny.policy.policy_store import ActivePolicy, policy_kind
from supertiny.policy.pool import ModelPool
from supertiny.policy.router import Router, RouteRequest
from supertiny.runtime import loading, model_memory
from supertiny.runtime.model_cache import ModelCache, ModelNotCachedError
from supertiny.runtime.model_memory import location_bytes, memory_budget, model_bytes, parse_memory_size
from supertiny.schema import Message

GiB = 1024**3


def names(cache: ModelCache) -> list[str]:
    return [name for name, _ in cache.models()]


# --- eviction, budget, leases ----------------------------------------------------------------------------------


def test_the_least_recently_used_model_is_evicted_first_and_closed():
    cache, opener = ModelCache(budget_bytes=300), Opener()
    a, b, c = (cache.open(key, opener(key)) for key in "abc")
    assert cache.open("a", opener("a")) is a and cache.get("b") is b  # a hit: no second open, now recently used
    assert names(cache) == ["c", "a", "b"] and opener.opened == ["a", "b", "c"]
    cache.open("d", opener("d"))
    assert c.closed and not a.closed and not b.closed and names(cache) == ["a", "b", "d"]
    cache.open("e", opener("e"))
    assert a.closed and names(cache) == ["b", "d", "e"]
    assert cache.open("a", opener("a")) is not a  # evicted: opens anew


def test_the_budget_is_respected_with_models_of_different_sizes():
    cache, opener = ModelCache(budget_bytes=1000), Opener()
    rng = random.Random(7)
    for _ in range(60):
        key = f"m{rng.randrange(12)}"
        cache.open(key, opener(key, size=rng.randrange(50, 400)))
        assert cache.used_bytes <= 1000
    stats = cache.stats()
    assert stats["budget_bytes"] == 1000 and stats["used_bytes"] == sum(m["bytes"] for m in stats["models_resident"])
    closed = [model for model in opener.models if model.closed]
    assert closed and all(not model.closed for _, model in cache.models())


def test_a_size_hint_makes_room_before_the_new_model_opens():
    cache, opener = ModelCache(budget_bytes=200), Opener()
    a = cache.open("a", opener("a"))
    cache.open("b", opener("b"))

    def open_c() -> SizedModel:
        assert a.closed, "a should be closed before c loads"
        return SizedModel("c", 100)

    cache.open("c", open_c, size_hint=lambda: 100)
    assert names(cache) == ["b", "c"]


def test_a_leased_model_is_never_evicted_and_becomes_evictable_when_released():
    cache, opener = ModelCache(budget_bytes=200), Opener()
    lease = cache.lease("a", opener("a"))
    a = lease.model
    for key in "bcdef":
        cache.open(key, opener(key))
    assert not a.closed and "a" in cache and cache.used_bytes <= 200
    assert cache.stats()["models_resident"][0] == {"name": "a", "bytes": 100, "leases": 1}
    lease.release()
    lease.release()  # a second release does nothing
    cache.open("g", opener("g"))
    cache.open("h", opener("h"))
    assert a.closed and "a" not in cache


def test_a_lease_by_name_by_model_and_on_something_not_cached():
    cache, opener = ModelCache(budget_bytes=10_000), Opener()
    model = cache.open(("a", "transformers", "/x", "{}"), opener("a"), name="a")
    with cache.lease("a") as by_name, cache.lease(model) as by_model:
        assert by_name is by_model is model
        assert cache.stats()["models_resident"][0]["leases"] == 2
    assert cache.stats()["models_resident"][0]["leases"] == 0
    with pytest.raises(ModelNotCachedError, match="no model 'b' is open"):
        cache.lease("b")
    with pytest.raises(ModelNotCachedError):
        cache.lease(SizedModel("elsewhere"))


def test_when_every_model_is_leased_a_new_one_still_opens_over_budget_with_a_warning(caplog):
    cache, opener = ModelCache(budget_bytes=150), Opener()
    first = cache.lease("a", opener("a"))
    with caplog.at_level(logging.WARNING, logger="supertiny.models"):
        second = cache.lease("b", opener("b"))
    assert not first.model.closed and not second.model.closed and cache.used_bytes == 200
    assert "over the model memory budget" in caplog.text and "every other model left is in use" in caplog.text
    second.release()  # the budget is restored as soon as a lease ends
    assert second.model.closed and cache.used_bytes == 100 and not first.model.closed
    first.release()
    assert names(cache) == ["a"]


def test_models_served_elsewhere_take_no_budget_and_are_never_evicted():
    cache, opener = ModelCache(budget_bytes=100), Opener()
    remote = cache.open("remote", lambda: SizedModel("remote", size=0, local=False))
    for key in "abc":
        cache.open(key, opener(key))
    assert not remote.closed and names(cache) == ["remote", "c"]


def test_a_model_that_fails_to_close_does_not_stop_eviction(caplog):
    cache = ModelCache(budget_bytes=100)
    failing = cache.open("a", lambda: SizedModel("a"))
    failing.close = lambda: (_ for _ in ()).throw(RuntimeError("stuck"))
    with caplog.at_level(logging.WARNING, logger="supertiny.models"):
        cache.open("b", lambda: SizedModel("b"))
    assert names(cache) == ["b"] and "closing model a failed: stuck" in caplog.text


def test_clear_closes_unleased_models_now_and_leased_ones_when_released_and_forget_does_not_close():
    cache, opener = ModelCache(budget_bytes=10_000), Opener()
    idle, engine = cache.open("idle", opener("idle")), cache.open("engine", opener("engine"))
    cache.forget(engine)
    assert "engine" not in cache and not engine.closed
    lease = cache.lease("busy", opener("busy"))
    cache.clear()
    assert idle.closed and not lease.model.closed and len(cache) == 0
    lease.release()
    assert lease.model.closed


def test_lowering_the_budget_evicts_at_once():
    cache, opener = ModelCache(budget_bytes=1000), Opener()
    models = [cache.open(key, opener(key)) for key in "abcd"]
    cache.budget_bytes = 250
    assert [model.closed for model in models] == [True, True, False, False]


# --- sizes and the budget's configuration ----------------------------------------------------------------------


def test_memory_sizes_parse_in_every_documented_form(monkeypatch):
    monkeypatch.setattr(model_memory, "system_memory_bytes", lambda: 64 * GiB)
    assert parse_memory_size("8GiB") == 8 * GiB
    assert parse_memory_size("8000MB") == 8_000_000_000
    assert parse_memory_size("123") == 123 and parse_memory_size(123) == 123
    assert parse_memory_size(" 1.5g ") == int(1.5 * GiB)
    assert parse_memory_size("512M") == 512 * 1024**2
    assert parse_memory_size("25%") == 16 * GiB
    assert parse_memory_size("0") == 0


@pytest.mark.parametrize("text", ["lots", "-1", "8 parsecs", "GiB", "", "150%", "1e9"])
def test_an_invalid_memory_size_is_one_clear_error(text):
    with pytest.raises(ConfigError, match=r"SUPERTINY_MODEL_MEMORY: .* is not a memory size \(give bytes"):
        parse_memory_size(text)


def test_the_budget_comes_from_the_value_the_environment_or_half_of_system_memory(monkeypatch):
    monkeypatch.setattr(model_memory, "system_memory_bytes", lambda: 64 * GiB)
    monkeypatch.delenv("SUPERTINY_MODEL_MEMORY", raising=False)
    assert memory_budget() == 32 * GiB and ModelCache().budget_bytes == 32 * GiB
    assert Settings().model_memory == "" and Settings().model_memory_bytes == 32 * GiB
    monkeypatch.setenv("SUPERTINY_MODEL_MEMORY", "8GiB")
    assert memory_budget() == 8 * GiB and Settings().model_memory_bytes == 8 * GiB
    assert memory_budget("2GiB") == 2 * GiB  # an explicit value wins
    monkeypatch.setenv("SUPERTINY_MODEL_MEMORY", "plenty")
    with pytest.raises(ConfigError, match="SUPERTINY_MODEL_MEMORY: 'plenty' is not a memory size"):
        assert Settings().model_memory_bytes


def test_serve_refuses_an_invalid_model_memory_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SUPERTINY_MODEL_MEMORY", raising=False)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    result = CliRunner().invoke(cli, ["--db", db, "serve", "--model-memory", "lots"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --model-memory: 'lots' is not a memory size (give bytes (8000000000), a size with a unit (8GiB, "
        "8000MB, 512M) or a share of system memory (50%))"]
    monkeypatch.setenv("SUPERTINY_MODEL_MEMORY", "lots")
    result = CliRunner().invoke(cli, ["--db", db, "serve"])
    assert result.exit_code == 1 and "error: SUPERTINY_MODEL_MEMORY: 'lots' is not a memory size" in result.output
    assert not (tmp_path / "store.db").exists()  # refused before anything started


def test_the_server_applies_its_model_memory_option_to_its_cache(sqlite_store, tmp_path, monkeypatch):
    from supertiny.serve.app import ServeOptions, create_app

    monkeypatch.delenv("SUPERTINY_MODEL_MEMORY", raising=False)
    pool = ModelPool(lambda name: SizedModel(name), cache=ModelCache(budget_bytes=10))
    create_app(Settings(home=tmp_path, database_url=sqlite_store.url), ServeOptions(model_memory="1GiB"),
               store=sqlite_store, pool=pool)
    assert pool.cache.budget_bytes == GiB
    monkeypatch.setenv("SUPERTINY_MODEL_MEMORY", "2GiB")
    create_app(Settings(home=tmp_path, database_url=sqlite_store.url), ServeOptions(), store=sqlite_store, pool=pool)
    assert pool.cache.budget_bytes == 2 * GiB


def test_a_model_size_comes_from_its_facts(tmp_path):
    assert model_bytes(SizedModel("stated", 1234)) == 1234
    assert model_bytes(ScriptedModel("endpoint")) == 0  # not local: its memory is elsewhere

    def tensor(pointer, numel, element_size):
        return types.SimpleNamespace(data_ptr=lambda: pointer, numel=lambda: numel, element_size=lambda: element_size)

    embedding = tensor(1, 1000, 2)
    module = types.SimpleNamespace(parameters=lambda: [embedding, tensor(2, 10, 4), embedding],  # tied weights
                                   buffers=lambda: [tensor(3, 5, 8)])
    local = types.SimpleNamespace(model=module, capabilities=Capabilities(local=True, logprobs=True))
    assert model_bytes(local) == 2000 + 40 + 40
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"x" * 321)
    llama = types.SimpleNamespace(llama=types.SimpleNamespace(model_path=str(weights)),
                                  capabilities=Capabilities(local=True, logprobs=True))
    assert model_bytes(llama) == 321


def test_a_model_size_before_opening_comes_from_its_weight_files(tmp_path):
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    (directory / "model-00001.safetensors").write_bytes(b"x" * 600)
    (directory / "model-00002.safetensors").write_bytes(b"x" * 400)
    (directory / "export.gguf").write_bytes(b"x" * 50)
    assert location_bytes(str(directory), {}) == 1000
    assert location_bytes(str(directory), {"dtype": "float32"}) == 2000
    assert location_bytes(str(directory), {"gguf_file": "export.gguf"}) == 50
    assert location_bytes("http://127.0.0.1:8001/v1", {"served_model": "x"}) == 0
    assert location_bytes(str(tmp_path / "missing"), {}) == 0


# --- users of the cache ----------------------------------------------------------------------------------------


@pytest.fixture
def cache():
    """A fresh process-wide model cache for one test (300 bytes), the previous one restored after."""
    fresh = ModelCache(budget_bytes=300)
    previous = loading.set_model_cache(fresh)
    yield fresh
    fresh.clear()
    loading.set_model_cache(previous)


@pytest.fixture
def backend(register_plugin, sqlite_store):
    backend = SizedBackend()
    register_plugin(types.SimpleNamespace(register_backends=hookimpl(lambda register: register(backend))))
    for name in ("a", "b", "c", "d"):
        register_model_version(sqlite_store, name=name, stage="external", format="hf", backend="sized-test",
                               path=f"/nowhere/{name}")
    return backend


def test_open_model_goes_through_the_process_wide_cache(cache, backend, sqlite_store):
    a = loading.open_model(sqlite_store, "a")
    assert loading.open_model(sqlite_store, "a") is a and len(backend.opened) == 1
    assert loading.open_model(sqlite_store, "a", size=50) is not a  # overrides are part of the key
    assert [name for name, _ in loading.cached_models()] == ["a", "a"] and cache.used_bytes == 150
    with loading.lease_model(sqlite_store, "b") as b:
        loading.open_model(sqlite_store, "c")
        loading.open_model(sqlite_store, "d")
        assert a.closed and not b.closed and cache.used_bytes <= 300
    loading.forget_model(b)
    assert not b.closed and b not in [model for _, model in loading.cached_models()]
    loading.close_models()
    assert len(cache) == 0 and all(model.closed for model in backend.opened if model is not b)


def test_the_model_pool_keeps_its_models_in_the_cache_and_reopens_evicted_ones():
    cache, opened = ModelCache(budget_bytes=200), []

    def opener(name):
        opened.append(name)
        return SizedModel(name)

    pool = ModelPool(opener, cache=cache)
    a = pool.get("a")
    assert pool.get("a") is a and names(cache) == ["a"] and pool.loaded() == ["a"]
    with pool.slot(["a"], timeout_s=1) as held:
        assert held == {"a": a}
        pool.get("b")
        pool.get("c")  # over budget: b goes, a is leased
        assert not a.closed and pool.loaded() == ["a", "c"]
    pool.get("d")  # a was used last when its lease ended: c goes
    assert not a.closed and pool.loaded() == ["a", "d"]
    pool.get("e")
    assert a.closed and pool.loaded() == ["d", "e"]
    assert pool.get("a") is not a and opened == ["a", "b", "c", "d", "e", "a"]
    given = SizedModel("given")
    pool.add("given", given)
    assert "given" in names(cache) and pool.memory()["budget_bytes"] == 200
    pool.close()
    assert "given" not in names(cache) and not given.closed


def test_the_pool_opens_registered_models_through_open_model(cache, backend, sqlite_store):
    pool = ModelPool.for_store(sqlite_store)
    assert pool.cache is cache
    model = pool.get("a")
    assert loading.open_model(sqlite_store, "a") is model and len(cache) == 1  # one copy, shared


def test_the_router_leases_the_model_while_it_answers():
    cache = ModelCache(budget_bytes=100)
    seen = []

    def evict_others(model):  # another request opens a model while this one answers
        seen.append(cache.stats()["models_resident"])
        cache.open("other", lambda: SizedModel("other"))

    pool = ModelPool(lambda name: SizedModel(name, on_generate=evict_others), cache=cache)
    kind = policy_kind("tiny")
    policy = ActivePolicy(id=1, route="r", version=1, kind="tiny", policy=kind,
                          params=kind.parse_params({"tiny": "small", "llm": "large"}))
    request = RouteRequest(request_id="r1", messages=[Message(role="user", content="hi")])
    outcome = Router(pool).route(policy, request)
    small = pool.get("small")
    assert outcome.model == "small" and not small.closed
    assert [(entry["name"], entry["leases"]) for entry in seen[0]] == [("small", 1)]
    assert cache.stats()["models_resident"][-1]["leases"] == 0


def test_the_evaluator_leases_the_model_it_evaluates(cache, backend, sqlite_store, register_plugin):
    from supertiny.eval.runner import EvalConfig, evaluate

    register_plugin(toy_domain, name="toy-domains")
    leases = []
    config = EvalConfig(model="a", domain="toy-weather", limit=2, concurrency=1)
    backend.on_generate = lambda model: leases.append(cache.stats()["models_resident"][-1]["leases"])
    evaluation = evaluate(sqlite_store, config)
    assert evaluation.n_tasks == 2 and leases == [1, 1]
    assert cache.stats()["models_resident"][0]["leases"] == 0


# --- thread safety ---------------------------------------------------------------------------------------------


def test_concurrent_leases_never_see_a_closed_model_and_open_each_key_once_at_a_time():
    cache, opener = ModelCache(budget_bytes=300), Opener(delay_s=0.001)
    failures = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            key = f"m{rng.randrange(6)}"
            with cache.lease(key, opener(key)) as model:
                if model.closed:
                    failures.append(f"{key} was closed while leased")
                time.sleep(rng.random() / 2000)
                if model.closed:
                    failures.append(f"{key} was closed while leased")

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as threads:
        list(threads.map(worker, range(8)))
    assert failures == []
    assert cache.used_bytes <= 300 and all(entry["leases"] == 0 for entry in cache.stats()["models_resident"])
    assert all(not model.closed for _, model in cache.models())
    evicted = [model for model in opener.models if model.closed]
    assert len(opener.opened) == len(evicted) + len(cache)  # every model opened is resident or was closed


def test_concurrent_first_requests_open_a_model_once():
    cache, opener = ModelCache(budget_bytes=300), Opener(delay_s=0.05)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as threads:
        models = list(threads.map(lambda _: cache.open("same", opener("same")), range(8)))
    assert opener.opened == ["same"] and all(model is models[0] for model in models)


@pytest.mark.skipif(model_memory._malloc_trim() is None, reason="no malloc_trim in this C library")
def test_closing_models_hands_their_freed_heap_back_to_the_system():
    import psutil

    process = psutil.Process()
    model_memory.return_freed_memory()  # what earlier tests freed goes first, so the blocks below take new pages
    before = process.memory_info().rss
    blocks = [bytearray(8192) for _ in range(40_000)]  # 320 MB in malloc's heap, below its mmap threshold
    last = blocks[-1]  # the top of the heap stays in use: freeing alone returns nothing
    del blocks
    held = process.memory_info().rss - before
    loading.close_models()
    returned = held - (process.memory_info().rss - before)
    assert held > 160 * 2**20 and returned > held / 2
    assert len(last) == 8192


def test_handing_freed_memory_back_without_malloc_trim_only_collects(monkeypatch):
    collected = []
    monkeypatch.setattr(model_memory, "_malloc_trim", lambda: None)
    monkeypatch.setattr(model_memory.gc, "collect", lambda: collected.append(True) or 0)
    model_memory.return_freed_memory()
    assert collected == [True]
