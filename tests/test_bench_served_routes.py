"""The served-routes benchmark (bench/served_routes.py) end to end: a live server, tiny in-process models, the toy
weather domain."""

import argparse
import json

import pytest
from conftest import REPO_ROOT
from helpers import toy_domain
from supertiny.models.versions import register_external


@pytest.fixture
def served_routes(register_plugin, monkeypatch, sqlite_store, tmp_path, tiny_model_dir, tiny_teacher_dir):
    register_plugin(toy_domain, name="toy-domains")
    register_external(sqlite_store, tiny_model_dir, name="tiny")
    register_external(sqlite_store, tiny_teacher_dir, name="teacher")
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUPERTINY_ENGINE", "off")
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import bench.served_routes

    return bench.served_routes


def test_routes_are_compared_on_the_same_tasks_through_a_live_server(served_routes, sqlite_store, tmp_path):
    from supertiny.policy.policy_store import active_row

    out = tmp_path / "out"
    result = served_routes.main([
        "--domain", "toy-weather", "--per-category", "2", "--max-tokens", "8", "--concurrency", "3", "--out", str(out),
        "--route", "tiny", "tiny", "tiny=tiny",
        "--route", "cascade", "cascade", "tiny=tiny", "llm=teacher", "threshold=0.9", "guided=llm"])

    assert sorted(path.suffix for path in out.iterdir()) == [".json", ".md", ".png"]
    assert json.loads(next(out.glob("*.json")).read_text())["paired"] == result["paired"]
    tiny, cascade = result["routes"]
    assert tiny["n"] == cascade["n"] == result["tasks"] and tiny["errors"] == cascade["errors"] == 0
    assert {record["task"] for record in tiny["records"]} == {record["task"] for record in cascade["records"]}
    assert cascade["escalated"] > 0  # a random tiny model is never 90% sure
    # the in-process teacher cannot decode guided: it answers freely, and the count says so
    (how, count), = cascade["decoding"].items()
    assert how.startswith("llm: free: teacher runs on transformers")
    assert count == round(cascade["escalated"] * result["tasks"])
    pair = result["paired"][0]
    assert (pair["route"], pair["against"], pair["tasks"]) == ("cascade", "tiny", result["tasks"])
    assert "| overall (n=" in next(out.glob("*.md")).read_text()
    # the bench's routes are the user's to see afterwards, but no longer active
    assert active_row(sqlite_store, "bench-tiny") is None


def test_a_route_needs_a_label_and_a_kind_and_labels_differ(served_routes):
    with pytest.raises(argparse.ArgumentTypeError, match="LABEL KIND"):
        served_routes.parse_routes([["lonely"]], "llm")
    with pytest.raises(argparse.ArgumentTypeError, match="its own label"):
        served_routes.parse_routes([["a", "tiny", "tiny=x"], ["a", "llm", "llm=y"]], "llm")
    default = served_routes.parse_routes(None, "big")
    assert [route["params"].get("guided") for route in default] == [None, ["llm"]]


def test_a_bad_route_is_one_line_and_stores_no_route(served_routes, sqlite_store, tmp_path, capsys):
    from supertiny.policy.policy_store import active_rows

    with pytest.raises(SystemExit) as exited:
        served_routes.main(["--domain", "toy-weather", "--out", str(tmp_path), "--route", "ok", "tiny", "tiny=tiny",
                            "--route", "bad", "cascade", "tiny=tiny", "llm=nowhere"])
    assert exited.value.code == 2 and "nowhere" in capsys.readouterr().err
    assert active_rows(sqlite_store) == []
