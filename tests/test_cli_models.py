"""``supertiny models``: list, show, register and chat with the tiny model, and one-line errors."""

import json

import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT
from supertiny.cli import cli
from supertiny.models.versions import register_model_version
from supertiny.runtime.loading import close_models
from supertiny.store.engine import Store

WEATHER_TOOLS = REPO_ROOT / "examples" / "weather_tools.json"


@pytest.fixture
def invoke(tmp_path):
    """Run ``supertiny --db <blank SQLite> --home <tmp> ...``; the store is created on first use."""
    base = ["--db", f"sqlite:///{tmp_path / 'cli.db'}", "--home", str(tmp_path / "home")]

    def run(*args: str):
        return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)

    yield run
    close_models()


@pytest.fixture
def registered(invoke, tiny_model_dir):
    result = invoke("models", "register", str(tiny_model_dir), "--name", "tiny")
    assert result.exit_code == 0, result.output
    return invoke


def _one_line_error(result, starts: str) -> None:
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {starts}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_list_on_a_blank_database_says_what_to_do(invoke):
    result = invoke("models", "list")
    assert result.exit_code == 0 and "supertiny models pull --all" in result.stdout
    assert json.loads(invoke("models", "list", "--json").stdout) == []


def test_register_list_and_show(registered, tiny_model_dir):
    result = registered("models", "list")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "STAGE", "PARENT", "PARAMS", "SIZE", "BACKEND", "PATH", "STATUS",
                              "CREATED"]
    assert row.split()[:3] == ["tiny", "external", "-"] and "transformers" in row

    listed = json.loads(registered("models", "list", "--json").stdout)
    assert [(item["name"], item["stage"], item["format"]) for item in listed] == [("tiny", "external", "hf")]
    assert listed[0]["params"] > 0 and listed[0]["path"] == str(tiny_model_dir.resolve())

    shown = json.loads(registered("models", "show", "tiny", "--json").stdout)
    assert shown["name"] == "tiny" and shown["params"] == listed[0]["params"]
    text = registered("models", "show", "tiny").stdout
    assert "stage:      external" in text and "backend:    transformers" in text


def test_show_lineage(registered, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cli.db'}")
    register_model_version(store, name="tiny-sft", stage="sft", format="hf", backend="transformers",
                           path="/models/tiny-sft", parent="tiny", algorithm="sft")
    register_model_version(store, name="tiny-pruned", stage="pruned", format="hf", backend="transformers",
                           path="/models/tiny-pruned", parent="tiny-sft", algorithm="prune")
    shown = json.loads(registered("models", "show", "tiny-pruned", "--lineage", "--json").stdout)
    assert [step["name"] for step in shown["lineage"]] == ["tiny-pruned", "tiny-sft", "tiny"]
    text = registered("models", "show", "tiny-pruned", "--lineage").stdout
    assert "parent:     tiny-sft" in text and "lineage (the model first, its root last):" in text


def test_register_an_endpoint(invoke):
    result = invoke("models", "register", "http://127.0.0.1:8000/v1", "--model", "qwen-7b",
                    "--api-key-env", "VLLM_API_KEY")
    assert result.exit_code == 0 and "registered qwen-7b: openai via openai" in result.stdout
    shown = json.loads(invoke("models", "show", "qwen-7b", "--json").stdout)
    assert shown["config"] == {"model": "qwen-7b", "api_key_env": "VLLM_API_KEY"}


def test_chat_with_tools(registered):
    from supertiny.registry import get_backends

    if "transformers" not in get_backends():
        pytest.skip("the transformers backend is not registered")
    result = registered("models", "chat", "tiny", "What's the weather in Paris?",
                        "--tools", str(WEATHER_TOOLS), "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    assert "call:" in result.stdout and "tokens:" in result.stdout and "prompt + " in result.stdout
    answer = json.loads(registered("models", "chat", "tiny", "hi", "--max-tokens", "4", "--json").stdout)
    assert answer["model"] == "tiny" and answer["completion_tokens"] <= 4 and answer["prompt_tokens"] > 0
    assert set(answer) >= {"text", "tool_calls", "problems", "latency_s", "tokens_per_s"}


def test_chat_with_a_path_instead_of_a_name(invoke, tiny_model_dir):
    result = invoke("models", "chat", str(tiny_model_dir), "hello", "--max-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["completion_tokens"] <= 2


@pytest.mark.parametrize(("args", "message"), [
    (["models", "show", "nope"], "unknown model 'nope'"),
    (["models", "chat", "nope", "hi"], "unknown model 'nope'"),
    (["models", "register", "/no/such/dir"], "no such file or directory: /no/such/dir"),
    (["models", "register", "http://127.0.0.1:8000/v1"], "which model does http://127.0.0.1:8000/v1 serve?"),
    (["models", "pull"], "give one model NAME or --all"),
    (["models", "pull", "qwen-tiny"], "no model 'qwen-tiny' in the offline catalog"),
])
def test_user_mistakes_are_one_line(invoke, args, message):
    _one_line_error(invoke(*args), message)


def test_unknown_model_suggests_the_close_one(registered):
    _one_line_error(registered("models", "show", "tinny"), "unknown model 'tinny' (did you mean 'tiny'?)")


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such tools file"),
    ("{not json", "is not valid JSON"),
    ("[]", "holds no tools"),
    ('[{"type": "function", "function": {"description": "no name"}}]', "tool 1 is not a valid tool schema"),
])
def test_bad_tools_files_are_one_line(registered, tmp_path, content, message):
    tools = tmp_path / "tools.json"
    if content is not None:
        tools.write_text(content)
    result = registered("models", "chat", "tiny", "hi", "--tools", str(tools))
    _one_line_error(result, f"{tools}" if content is not None else message)
    assert message in result.stderr


def test_bare_function_schemas_are_accepted_as_tools(tmp_path):
    from supertiny.runtime.chat import load_tools_file

    path = tmp_path / "tools.json"
    bare = {"name": "f", "parameters": {"type": "object", "properties": {}}}
    path.write_text(json.dumps({"tools": [bare]}))
    assert [tool.name for tool in load_tools_file(path)] == ["f"]
    assert [tool.name for tool in load_tools_file(WEATHER_TOOLS)] == ["get_current_weather", "get_forecast"]


def test_register_and_chat_with_a_gguf_file(invoke, tiny_model_dir, tmp_path):
    from tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny-q8.gguf")
    registered = invoke("models", "register", str(path))
    assert registered.exit_code == 0 and "registered tiny-q8: gguf via transformers" in registered.stdout
    result = invoke("models", "chat", "tiny-q8", "hello", "--max-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "tiny-q8"
