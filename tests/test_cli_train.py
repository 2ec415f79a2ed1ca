"""``supertiny train``: commands generated from the trainer registry and the config dataclasses, a
summary line, one-line errors, lineage visible through ``models show --lineage``."""

import dataclasses
import json

import pytest
from click.testing import CliRunner
from helpers import toy_domain
from helpers.training import harvest_snapshot
from supertiny.cli import cli
from supertiny.cli.app import config_options
from supertiny.store.engine import Store
from supertiny.train.kd_config import KDConfig
from supertiny.train.sft_config import SFTConfig

FAST = ["--max-steps", "2", "--grad-accum", "1", "--batch-size", "2", "--max-length", "512", "--threads", "1",
        "--learning-rate", "0.005"]


@pytest.fixture
def invoke(register_plugin, tmp_path, tiny_model_dir):
    register_plugin(toy_domain, name="toy-domains")
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str):
        return CliRunner().invoke(cli, ["--db", url, "--home", str(tmp_path / "home"), *args])

    assert run("models", "register", str(tiny_model_dir), "--name", "student").exit_code == 0
    run.store = Store(url)
    return run


def test_every_config_field_is_an_option_with_its_help():
    options = {option.name: option for option in config_options(KDConfig)}
    assert set(options) == {field.name for field in dataclasses.fields(KDConfig)}
    assert options["beta"].type.name == "float" and options["beta"].default == 0.0
    assert options["lora"].is_flag and options["lora"].secondary_opts == ["--no-lora"]
    assert options["precision"].type.choices == ("auto", "bf16", "fp32", "mixed")
    assert options["limit"].default is None and options["limit"].type.name == "integer"
    assert "generalised JSD" in options["beta"].help


def test_train_lists_the_registered_trainers(invoke):
    listed = invoke("train", "--help")
    assert listed.exit_code == 0
    for name in ("sft", "rft", "dpo", "grpo", "kd"):
        assert f"  {name} " in listed.output
    sft_help = invoke("train", "sft", "--help").output
    assert "--lora-r" in sft_help and "--teacher" not in sft_help
    assert "--teacher MODEL" in invoke("train", "kd", "--help").output


def test_train_sft_prints_a_summary_and_the_lineage_shows_it(invoke):
    snapshot = harvest_snapshot(invoke.store, "weather")
    result = invoke("train", "sft", "--student", "student", "--data", "weather", "--name", "tiny-sft", *FAST)
    assert result.exit_code == 0, result.output
    assert "model tiny-sft: sft of student on weather@1" in result.output
    assert "steps 2" in result.output and "loss " in result.output and " -> " in result.output
    shown = json.loads(invoke("models", "show", "tiny-sft", "--lineage", "--json").output)
    assert [row["name"] for row in shown["lineage"]] == ["tiny-sft", "student"]
    assert shown["dataset_id"] == snapshot.id and shown["stage"] == "sft"
    assert shown["config"]["source"]["options"]["lora_r"] == 16 and shown["metrics"]["steps"] == 2


def test_train_json_output(invoke):
    harvest_snapshot(invoke.store, "weather")
    result = invoke("train", "sft", "--student", "student", "--data", "weather@1", "--no-lora", "--json", *FAST)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{"):])
    assert payload["name"] == "student-sft-weather-v1" and payload["metrics"]["steps"] == 2
    assert payload["param_count"] > 0


def test_bad_input_is_one_line_and_exit_1(invoke):
    harvest_snapshot(invoke.store, "weather")
    cases = [
        (["sft", "--student", "student", "--data", "nope"], "error: no dataset 'nope'"),
        (["sft", "--student", "student", "--data", "weather", "--domain", "toy-alerts"], "not domain 'toy-alerts'"),
        (["kd", "--student", "student", "--data", "weather"], "error: kd needs a --teacher"),
        (["sft", "--student", "ghost", "--data", "weather"], "error: unknown model 'ghost'"),
        (["sft", "--student", "student", "--data", "weather", "--lora-r", "0"], "--lora-r must be at least 1"),
    ]
    for args, message in cases:
        result = invoke("train", *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert invoke("train", "sft", "--student", "student", "--data", "weather", "--precision", "fp8").exit_code == 2


def test_sft_config_defaults_are_the_cli_defaults():
    options = {option.name: option.default for option in config_options(SFTConfig)}
    assert options == dataclasses.asdict(SFTConfig())
