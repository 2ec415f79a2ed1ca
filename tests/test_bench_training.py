"""bench.training on the tiny model: each variant trains in its own process and is reported side by side."""

import json

import pytest
from conftest import REPO_ROOT
from helpers import toy_domain
from helpers.training import harvest_snapshot
from supertiny.models.versions import register_external


@pytest.fixture
def bench_training(monkeypatch, register_plugin, tmp_path):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path / "home"))
    register_plugin(toy_domain, name="toy-domains")
    import bench.training

    return bench.training


def test_variants_parse_field_values_as_json_else_text(bench_training):
    variant = bench_training.Variant.parse("fast: lora_dropout=0, adapter_fp32=false, lora_targets=q_proj")

    assert variant.name == "fast"
    assert variant.options == {"lora_dropout": 0, "adapter_fp32": False, "lora_targets": "q_proj"}
    assert bench_training.Variant.parse("default").options == {}
    with pytest.raises(ValueError, match="is not field=value"):
        bench_training.Variant.parse("broken:lora_dropout")


def test_each_variant_trains_in_its_own_process_and_is_compared_to_the_first(bench_training, sqlite_store,
                                                                           tiny_model_dir, tmp_path, capsys):
    register_external(sqlite_store, tiny_model_dir, name="student")
    harvest_snapshot(sqlite_store, "weather", limit=4)

    arguments = ["--data", "weather", "--student", "student", "--db", sqlite_store.url, "--steps", "2",
                 "--grad-accum", "1", "--repeats", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):  # a misspelt option is refused before anything runs
        bench_training.main([*arguments, "--variant", "typo:lora_dropuot=0"])
    for wrong, named in ((["--data", "no-such-snapshot"], "no-such-snapshot"),
                         (["--beside-engine", "no-such-model"], "no-such-model")):
        with pytest.raises(SystemExit):  # so is a snapshot or model that is not in the store
            bench_training.main([*arguments, *wrong])
        assert named in capsys.readouterr().err
    assert not list(tmp_path.glob("training-*"))

    result = bench_training.main([*arguments, "--variant", "trl-head:head=trl", "--variant", "default"])

    runs = {run["variant"]: run for run in result["runs"]}
    for name in ("trl-head", "default"):
        assert "error" not in runs[name], runs[name]
        assert len(runs[name]["step_s"]) == 2 and runs[name]["tokens"] > 0 and runs[name]["records"] == 2
    assert [(row["variant"], row["condition"]) for row in result["summary"]] == [("trl-head", "alone"),
                                                                                ("default", "alone")]
    assert result["summary"][0]["vs_first"] == 0.0
    (stem,) = {path.with_suffix("") for path in tmp_path.glob("training-*")}
    assert json.loads(stem.with_suffix(".json").read_text())["data"] == "weather"
    assert "| default | alone | 1 |" in stem.with_suffix(".md").read_text()
    assert stem.with_suffix(".png").stat().st_size > 0
