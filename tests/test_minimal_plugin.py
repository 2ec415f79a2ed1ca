"""The README's minimal domain plugin, taken from the README itself: installed as a distribution, listed and
harvested through the CLI, and solved through its tools by a scripted teacher."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from helpers.scripted_chat import ScriptedChatModel, call
from langchain_core.messages import AIMessage
from supertiny.harvest.queries import run_status
from supertiny.harvest.runner import HarvestConfig, run_harvest

MODULE = "thermostat_domain"


def readme_plugin() -> str:
    """The first python block of the README's plugin section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Write a domain plugin"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def installed(tmp_path) -> Path:
    """The README's file and a dist-info naming it in supertiny's entry-point group, as pip leaves them."""
    (tmp_path / f"{MODULE}.py").write_text(readme_plugin())
    dist_info = tmp_path / "thermostat_domain-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: thermostat-domain\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[supertiny]\nthermostat = {MODULE}\n")
    return tmp_path


def test_the_readme_plugin_is_short_and_complete():
    code = readme_plugin()
    assert len(code.splitlines()) < 60
    assert "register_domains" in code and "def verify" in code and "def tasks" in code


def test_installed_it_is_listed_and_harvested_through_the_cli(installed, tiny_model_dir, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "SUPERTINY_LOAD_PLUGINS"}
    env["PYTHONPATH"] = str(installed)

    def cli(*args):
        return subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), "--db", f"sqlite:///{tmp_path / 'x.db'}",
                               "--home", str(tmp_path / "home"), *args], capture_output=True, text=True, env=env,
                              cwd=REPO_ROOT, timeout=300)

    shown = cli("domains", "show", "thermostat", "--json")
    assert shown.returncode == 0, shown.stderr
    domain = json.loads(shown.stdout)
    assert [row["category"] for row in domain["categories"]] == ["set"]
    harvested = cli("harvest", "run", "--domain", "thermostat", "--teacher", str(tiny_model_dir), "--limit", "2",
                    "--max-new-tokens", "8")
    assert harvested.returncode == 0, harvested.stderr
    assert "run 1: 2/2 samples" in harvested.stdout


def test_a_teacher_that_sets_the_asked_temperature_passes_and_bad_calls_read_as_messages(installed, store,
                                                                                           register_plugin):
    spec = importlib.util.spec_from_file_location(MODULE, installed / f"{MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_plugin(module, name="thermostat")
    tool_results = []

    def teacher(messages, kwargs):
        if messages[-1].type == "tool":
            tool_results.append(messages[-1].content)
            return AIMessage(content="Done.")
        celsius = int(re.search(r"(\d+) degrees", messages[-1].content).group(1))
        if celsius == 6:
            return call("set_temperature", celsius=99)  # refused by the tool: the model reads why
        return call("set_temperature", celsius=celsius)

    result = run_harvest(store, HarvestConfig(domain="thermostat", teacher="scripted"),
                         lambda: ScriptedChatModel(respond=teacher))
    train = {task.external_id for task in module.ThermostatDomain().tasks("train")}
    assert "set-6" in train
    status = run_status(store, result.run_id)
    assert (status["done"], status["passed"]) == (len(train), len(train) - 1)
    errors = [text for text in tool_results if "error" in text]
    assert errors == ["{\"error\": \"ValueError: the thermostat takes 5 to 30 degrees Celsius\"}"]


def test_the_function_environment_answers_unknown_tools_and_bad_arguments_with_one_message():
    from supertiny.domain import FunctionEnvironment, ToolCallError
    from supertiny.schema import ParsedCall

    class Lamp:
        def __init__(self):
            self.on = False

        def switch(self, on: bool) -> dict:
            """Switch the lamp."""
            self.on = on
            return {"on": on}

        def _private(self):
            raise AssertionError("not a tool")

    environment = FunctionEnvironment(Lamp())
    assert environment.execute(ParsedCall(name="switch", arguments={"on": "true"})) == {"on": True}
    assert environment.state.on is True
    with pytest.raises(ToolCallError, match=r"unknown tool '_private'; the tools are switch"):
        environment.execute(ParsedCall(name="_private", arguments={}))
    with pytest.raises(ToolCallError, match=r"invalid arguments for switch: on: Missing required argument; "
                                            r"colour: Unexpected keyword argument"):
        environment.execute(ParsedCall(name="switch", arguments={"colour": "red"}))
