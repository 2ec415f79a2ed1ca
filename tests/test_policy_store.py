"""Stored routing policies: versions, one active per route, rollback, and the TTL cache that makes a
change apply without a restart."""

import threading
import time

import pytest
from supertiny.errors import DatabaseError, InvalidInputError, NotFoundError
from supertiny.policy import policy_store
from supertiny.policy.policy_store import PolicyStore, activate, active_rows, disable, history, set_policy
from supertiny.registry import get_policies


def test_set_policy_appends_versions_and_keeps_one_active(store):
    first = set_policy(store, "weather", "tiny", {"tiny": "small"}, note="start small")
    second = set_policy(store, "weather", "cascade", {"tiny": "small", "llm": "large", "threshold": 0.7})
    set_policy(store, "other", "llm", {"llm": "large"})
    assert (first.version, second.version) == (1, 2)
    rows = history(store, "weather")
    assert [(row.version, row.kind, row.active) for row in rows] == [(1, "tiny", False), (2, "cascade", True)]
    assert rows[0].note == "start small"
    assert rows[1].params["threshold"] == 0.7 and rows[1].params["timeout_s"] == 120.0  # defaults are stored
    assert [row.route for row in active_rows(store)] == ["other", "weather"]


def test_activate_rolls_back_and_disable_stops_a_route(store):
    set_policy(store, "weather", "tiny", {"tiny": "small"})
    set_policy(store, "weather", "llm", {"llm": "large"})
    assert activate(store, "weather", 1).version == 1
    assert policy_store.active_row(store, "weather").kind == "tiny"
    assert set_policy(store, "weather", "llm", {"llm": "larger"}).version == 3  # versions keep counting
    disable(store, "weather")
    assert policy_store.active_row(store, "weather") is None
    with pytest.raises(NotFoundError, match="no policy version 9"):
        activate(store, "weather", 9)
    assert activate(store, "weather", 2).active


def test_concurrent_set_policy_never_breaks_the_one_active_rule(store):
    errors = []

    def writer(index: int) -> None:
        try:
            set_policy(store, "busy", "tiny", {"tiny": f"model-{index}"})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    get_policies()  # load the plugins first: load_plugins() is not safe to race (reported)
    threads = [threading.Thread(target=writer, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = history(store, "busy")
    assert sorted(row.version for row in rows) == list(range(1, 7))
    assert sum(row.active for row in rows) == 1


@pytest.mark.parametrize(
    ("route", "kind", "params", "message"),
    [
        ("weather", "cascade", {"tiny": "small"}, "invalid params for a cascade policy: llm: Field required"),
        ("weather", "tiny", {"tiny": "small", "treshold": 0.5}, "treshold: Extra inputs are not permitted"),
        ("weather", "canary", {"a": "x", "b": "y", "percent": 150}, "percent: Input should be less than or equal"),
        ("weather", "casade", {}, "unknown policy 'casade' (did you mean 'cascade'?)"),
        ("has space", "tiny", {"tiny": "small"}, "invalid route name"),
    ],
)
def test_invalid_policies_are_refused_with_one_clear_line(sqlite_store, route, kind, params, message):
    with pytest.raises((InvalidInputError, NotFoundError)) as caught:
        set_policy(sqlite_store, route, kind, params)
    assert message in str(caught.value)


def test_history_of_an_unknown_route(sqlite_store):
    set_policy(sqlite_store, "weather", "tiny", {"tiny": "small"})
    with pytest.raises(NotFoundError, match="routes: weather"):
        history(sqlite_store, "wether")


def test_a_changed_policy_applies_after_the_ttl_without_restart(sqlite_store):
    policies = PolicyStore(sqlite_store, ttl_s=0.3)
    assert policies.active_policy("weather") is None
    set_policy(sqlite_store, "weather", "tiny", {"tiny": "small"})
    assert policies.active_policy("weather") is None  # the cached miss lives until the TTL ends
    time.sleep(0.35)
    first = policies.active_policy("weather")
    assert (first.version, first.kind, first.params.tiny) == (1, "tiny", "small")
    set_policy(sqlite_store, "weather", "llm", {"llm": "large"})
    assert policies.active_policy("weather").version == 1
    time.sleep(0.35)
    second = policies.active_policy("weather")
    assert (second.version, second.kind) == (2, "llm")
    assert [policy.route for policy in policies.routes()] == ["weather"]


def test_the_last_known_policy_is_served_while_the_database_is_down(sqlite_store, monkeypatch):
    policies = PolicyStore(sqlite_store, ttl_s=0.0)
    set_policy(sqlite_store, "weather", "tiny", {"tiny": "small"})
    assert policies.active_policy("weather").version == 1

    def down(*args, **kwargs):
        raise DatabaseError("cannot connect to the database")

    monkeypatch.setattr(policy_store, "active_row", down)
    assert policies.active_policy("weather").version == 1
    with pytest.raises(DatabaseError):
        policies.active_policy("never-seen")
