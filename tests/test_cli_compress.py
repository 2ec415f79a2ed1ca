"""``supertiny compress``: commands generated from the compressor registry and the config dataclasses, a
summary table before/after (params, bytes, tokens/s, accuracy), healing a pruned model, one-line errors."""

import json

import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT
from helpers import toy_domain
from helpers.training import harvest_snapshot
from supertiny.cli import cli
from supertiny.cli.compress import compress
from supertiny.compress.quantize_compressor import QuantizeCompressor
from supertiny.compress.quantize_config import QuantizeConfig
from supertiny.runtime.loading import close_models
from supertiny.store.engine import Store

EVAL = ["--eval-domain", "toy-weather", "--eval-split", "test", "--eval-per-category", "1"]


@pytest.fixture
def invoke(register_plugin, tmp_path, tiny_model_dir):
    register_plugin(toy_domain, name="toy-domains")
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str):
        return CliRunner().invoke(cli, ["--db", url, "--home", str(tmp_path / "home"), *args])

    assert run("models", "register", str(tiny_model_dir), "--name", "student").exit_code == 0
    run.store = Store(url)
    yield run
    close_models()


def test_compress_lists_the_registered_compressors_with_their_options(invoke):
    listed = invoke("compress", "--help")
    assert listed.exit_code == 0 and "  prune " in listed.output and "  quantize " in listed.output
    prune_help = invoke("compress", "prune", "--help").output
    for option in ("--target-params", "--ratio", "--drop-kv-groups", "--drop-layers", "--data SNAPSHOT",
                   "--eval-domain", "--importance [activation|magnitude]"):
        assert option in prune_help
    quantize_help = invoke("compress", "quantize", "--help").output
    assert "--scheme [int8|int4|w8a8]" in quantize_help
    assert "--data" not in quantize_help and "--heal" not in quantize_help
    assert "  heal " in invoke("train", "--help").output


def test_prune_prints_a_before_and_after_table_with_accuracy(invoke):
    harvest_snapshot(invoke.store, "weather")
    result = invoke("compress", "prune", "--model", "student", "--data", "weather", "--target-params", "120k",
                    "--threads", "1", *EVAL)
    assert result.exit_code == 0, result.output
    assert "model student-pruned-120k: prune of student (calibrated on weather@1)" in result.output
    table = result.output[result.output.index("NAME"):]
    assert "DECODE TOK/S" in table and "ACCURACY" in table and "CELSIUS" in table
    assert "\nstudent " in table and "\nstudent-pruned-120k  pruned" in table
    assert "accuracy on toy-weather test (2 tasks a model)" in result.output
    shown = json.loads(invoke("models", "show", "student-pruned-120k", "--lineage", "--json").output)
    assert [row["name"] for row in shown["lineage"]] == ["student-pruned-120k", "student"]


def test_quantize_json_output(invoke):
    result = invoke("compress", "quantize", "--model", "student", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{"):])
    assert payload["result"]["name"] == "student-int8" and payload["result"]["stage"] == "quantized"
    before, after = payload["models"]
    assert before["name"] == "student" and after["backend"] == "transformers-quantized"
    assert after["size_bytes"] < before["size_bytes"] and after["decode_tok_s"] > 0 and before["decode_tok_s"] > 0


def test_a_pruned_model_heals_by_distilling_from_its_parent(invoke):
    harvest_snapshot(invoke.store, "weather")
    pruned = invoke("compress", "prune", "--model", "student", "--data", "weather", "--ratio", "0.2", "--name", "p",
                    "--no-speed", "--json")
    assert pruned.exit_code == 0, pruned.output
    result = invoke("train", "heal", "--student", "p", "--data", "weather", "--max-steps", "2", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{"):])
    assert payload["name"] == "p-healed" and payload["metrics"]["steps"] == 2 and payload["stage"] == "healed"
    shown = json.loads(invoke("models", "show", "p-healed", "--lineage", "--json").output)
    source = shown["config"]["source"]
    assert source["algorithm"] == "heal" and source["teacher"] == "student" and source["parent"] == "p"
    assert source["options"]["positions"] == "all" and not source["options"]["teacher_context"]
    assert [row["name"] for row in shown["lineage"]] == ["p-healed", "p", "student"]


def test_bad_input_is_one_line_and_exit_1(invoke, tmp_path):
    harvest_snapshot(invoke.store, "weather")
    cases = [
        (["prune", "--model", "student", "--target-params", "2B", "--importance", "magnitude"],
         "error: the target of 2,000,000,000 parameters is more than model 'student' has"),
        (["prune", "--model", "student", "--ratio", "0.1"], "needs calibration data: give --data SNAPSHOT"),
        (["prune", "--model", "student", "--data", "weather", "--domain", "toy-alerts", "--ratio", "0.1"],
         "not domain 'toy-alerts'"),
        (["prune", "--model", "nope", "--ratio", "0.1"], "error: unknown model 'nope'"),
        (["quantize", "--model", "student", "--group-size", "7"], "--group-size must be one of"),
    ]
    for args, message in cases:
        result = invoke("compress", *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_config_fields_must_not_clash_with_the_common_options():
    import dataclasses

    @dataclasses.dataclass
    class Clashing(QuantizeConfig):
        speed: bool = True

    class ClashingCompressor(QuantizeCompressor):
        config_class = Clashing

    with pytest.raises(TypeError, match=r"clash with the common options: \['speed'\]"):
        compress.algorithm_command(ClashingCompressor())


def test_the_compression_benchmark_runs_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.compress import main

    result = main(["--tiny", "--new-tokens", "4", "--prompt-tokens", "16", "--bandwidth-gib", "0.0625",
                   "--out", str(tmp_path)])
    assert [row["stage"] for row in result["models"]] == ["external", "pruned", "quantized"]
    for row in result["models"]:
        assert "error" not in row, row
        assert row["decode_tok_s"] > 0 and row["bytes_per_token"] > 0 and row["peak_rss_bytes"] > 2**20
        assert row["fraction_of_bound"] > 0
    tiny, pruned, int8 = result["models"]
    assert pruned["params"] < tiny["params"] == int8["params"] and int8["bytes_per_token"] < tiny["bytes_per_token"] / 3
    written = sorted(path.suffix for path in tmp_path.iterdir())
    assert written == [".json", ".md", ".png"]
    assert "| tiny-int8 | quantized |" in next(tmp_path.glob("*.md")).read_text()


def test_the_benchmark_makes_gguf_variants_and_reads_their_decode_bytes(sqlite_store, tmp_path, tiny_model_dir,
                                                                        monkeypatch):
    import shutil

    import gguf
    from safetensors.numpy import load_file, save_file
    from supertiny.compress.gguf_export import export_gguf
    from supertiny.config import Settings
    from supertiny.models.versions import get_model_version, register_external

    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.compress import COMPRESSED_STAGES, LOAD_KEYS, gguf_bytes_per_token, make_variants

    register_external(sqlite_store, tiny_model_dir, name="student")
    settings = Settings(home=tmp_path / "home", database_url=sqlite_store.url)
    try:
        names = make_variants(sqlite_store, settings, "student",
                              ["gguf-q4_0", "gguf-f16", "gguf-q4_0", "gguf-q4_0-max"])
    finally:
        close_models()
    assert names == ["student", "student-gguf-q4_0", "student-gguf-f16", "student-gguf-q4_0-max"]
    scales = {name: get_model_version(sqlite_store, name).config["source"]["options"].get("q4_scales")
              for name in ("student-gguf-q4_0", "student-gguf-q4_0-max")}
    assert scales == {"student-gguf-q4_0": "search", "student-gguf-q4_0-max": "max"}
    for name in names[1:]:
        row = get_model_version(sqlite_store, name)
        assert (row.stage, row.backend, row.format) == ("quantized", "llama-cpp", "gguf")
        assert row.stage in COMPRESSED_STAGES and "tokenizer" in LOAD_KEYS
    q4, f16 = (get_model_version(sqlite_store, name).path for name in names[1:3])
    assert gguf_bytes_per_token(q4) < gguf_bytes_per_token(f16) / 2

    sizes = {tensor.name: int(tensor.n_bytes) for tensor in gguf.GGUFReader(f16).tensors}
    assert gguf_bytes_per_token(f16) == sum(sizes.values()) - sizes["token_embd.weight"]  # untied: one row read
    tied_dir = tmp_path / "tied"
    shutil.copytree(tiny_model_dir, tied_dir)
    state = load_file(str(tied_dir / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(tied_dir / "model.safetensors"), metadata={"format": "pt"})
    tied = export_gguf(tied_dir, tmp_path / "tied.gguf", "f16").path
    assert gguf_bytes_per_token(tied) == sum(int(tensor.n_bytes) for tensor in gguf.GGUFReader(str(tied)).tensors)


def test_the_compression_benchmark_times_gguf_variants_with_llama_cpp(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.compress import main

    result = main(["--tiny", "--make", "gguf-q8_0,gguf-q4_0", "--new-tokens", "4", "--prompt-tokens", "16",
                   "--repeats", "2", "--bandwidth-gib", "0.0625", "--out", str(tmp_path)])
    rows = {row["name"]: row for row in result["models"]}
    assert [*rows][:1] + [*rows][-2:] == ["tiny", "tiny-gguf-q8_0", "tiny-gguf-q4_0"]
    for name in ("tiny-gguf-q8_0", "tiny-gguf-q4_0"):
        row = rows[name]
        assert "error" not in row, row
        assert (row["stage"], row["format"], row["threads"]) == ("quantized", "gguf", 1)
        assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0 and row["bytes_per_token"] > 0
        assert row["fraction_of_bound"] > 0
    assert rows["tiny-gguf-q4_0"]["bytes_per_token"] < rows["tiny-gguf-q8_0"]["bytes_per_token"]
    assert rows["tiny-gguf-q8_0"]["bytes_per_token"] < rows["tiny"]["bytes_per_token"] / 3


def test_the_benchmark_re_evaluates_where_the_stored_evaluation_is_smaller(monkeypatch):
    import argparse

    import supertiny.eval.queries as queries
    import supertiny.eval.runner as runner
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.compress import accuracy

    categories = {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.3}}
    stored = [{"id": 1, "accuracy": 0.4, "n_tasks": 10, "per_category": categories}]
    run = []

    def evaluate(store, config):
        run.append(config.per_category)
        stored.append({**stored[-1], "id": len(stored) + 1, "n_tasks": 2 * config.per_category})

    monkeypatch.setattr(queries, "latest_evaluation", lambda *args, **kwargs: stored[-1])
    monkeypatch.setattr(runner, "evaluate", evaluate)
    args = argparse.Namespace(eval_domain="d", eval_split="test", eval_run=5)
    assert accuracy(None, "m", args)["evaluation_id"] == 1 and run == []  # 5 a category are stored
    assert accuracy(None, "m", argparse.Namespace(**{**vars(args), "eval_run": 10}))["eval_tasks"] == 20
    assert run == [10]
    assert accuracy(None, "m", argparse.Namespace(**{**vars(args), "eval_run": 0}))["eval_tasks"] == 20


def test_the_benchmark_table_gives_intervals_the_token_budget_and_paired_tests(monkeypatch):
    import argparse

    import supertiny.eval.queries as queries
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.compress import accuracy, markdown, paired_tests

    def stored(name, right, budget_hits):
        records = [{"task_hash": f"t{index}", "correct": index < right,
                    "completion_tokens": 256 if index < budget_hits else 40} for index in range(50)]
        return {"id": 1, "model": name, "accuracy": right / 50, "n_tasks": 50, "invalid_rate": 0.1,
                "tokens_per_request": 50.0, "per_category": {"simple": {"accuracy": right / 50}},
                "config": {"max_new_tokens": 256}, "records": records}

    evaluations = {"parent": stored("parent", 30, 0), "child": stored("child", 10, 50)}
    monkeypatch.setattr(queries, "latest_evaluation", lambda store, name, *args, **kwargs: evaluations[name])
    args = argparse.Namespace(eval_domain="bfcl", eval_split="test", eval_run=0)
    models = []
    for name in evaluations:
        row = {"name": name, "stage": "pruned", "params": 1, "size_bytes": 1, "bytes_per_token": 1,
               "prefill_tok_s": 1.0, "decode_tok_s": 1.0, "decode_cpu_tok_s": 1.0, "bound_tok_s": 1.0,
               "fraction_of_bound": 1.0, "peak_rss_bytes": 1}
        row.update(accuracy(None, name, args))
        models.append(row)
    assert (models[0]["correct"], models[0]["at_budget"], models[1]["at_budget"]) == (30, 0, 50)
    paired = paired_tests(models)
    assert (paired[0]["only_baseline"], paired[0]["only_model"], paired[0]["shared_tasks"]) == (20, 0, 50)
    table = markdown({"created": "now", "machine": "m", "bandwidth_gb_s": 1.0, "prompt_tokens": 1, "new_tokens": 1,
                      "repeats": 1, "models": models, "paired": paired})
    assert "| 60.0% [46.2, 72.4] (n=50) | 10.0% | 50 | 0 of 50 |" in table
    assert "| 20.0% [11.2, 33.0] (n=50) | 10.0% | 50 | 50 of 50 |" in table
    assert "- child: -40.0 points on 50 tasks (0 right only for it, 20 only for the baseline), p = 2e-06" in table
