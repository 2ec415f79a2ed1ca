"""The model registry on SQLite and PostgreSQL: register, list, lineage, and external models."""

import math

import pytest
from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.models.versions import (
    find_model_version,
    get_model_version,
    lineage,
    list_model_versions,
    register_external,
    register_model_version,
    summarize_model_versions,
)
from supertiny.store import Dataset
from tiny_gguf import write_tiny_gguf


def _register(store, name, stage="base", **kwargs):
    return register_model_version(store, name=name, stage=stage, format="hf", backend="transformers",
                                  path=f"/models/{name}", **kwargs)


def _dataset(store) -> int:
    with store.session() as session:
        dataset = Dataset(name="bfcl-harvest", version=1, domain="bfcl", source={"run": 1}, n_items=0)
        session.add(dataset)
        session.flush()
        return dataset.id


def test_register_get_and_list(store):
    row = _register(store, "qwen-small", param_count=494_032_768, size_bytes=988_097_824,
                    config={"dtype": "bfloat16"})
    _register(store, "qwen-large")
    assert row.id and row.status == "ready" and row.created_at is not None
    fetched = get_model_version(store, "qwen-small")
    assert (fetched.id, fetched.param_count, fetched.config) == (row.id, 494_032_768, {"dtype": "bfloat16"})
    assert [version.name for version in list_model_versions(store)] == ["qwen-small", "qwen-large"]
    assert [version.name for version in list_model_versions(store, stage="sft")] == []


def test_a_name_is_registered_once_unless_replaced(store):
    first = _register(store, "student")
    with pytest.raises(InvalidInputError, match="already registered"):
        _register(store, "student")
    replaced = register_model_version(store, name="student", stage="base", format="hf",
                                      backend="transformers", path="/elsewhere", replace=True)
    assert replaced.id == first.id and get_model_version(store, "student").path == "/elsewhere"


@pytest.mark.parametrize(("name", "stage"), [("", "base"), ("has space", "base"), ("ok", "finetuned")])
def test_bad_names_and_stages_are_refused(store, name, stage):
    with pytest.raises(InvalidInputError):
        _register(store, name, stage=stage)


def test_lineage_runs_back_to_the_root_with_dataset_ids(store):
    dataset_id = _dataset(store)
    _register(store, "qwen-0.5b")
    _register(store, "qwen-0.5b-sft", stage="sft", parent="qwen-0.5b", dataset_id=dataset_id, algorithm="sft")
    pruned = _register(store, "qwen-0.4b", stage="pruned", parent="qwen-0.5b-sft", algorithm="prune")
    chain = lineage(store, "qwen-0.4b")
    assert [(row.name, row.stage, row.dataset_id) for row in chain] == [
        ("qwen-0.4b", "pruned", None), ("qwen-0.5b-sft", "sft", dataset_id), ("qwen-0.5b", "base", None)]
    assert [row.name for row in lineage(store, "qwen-0.5b")] == ["qwen-0.5b"]
    by_name = {row["name"]: row for row in summarize_model_versions(store)}
    assert by_name["qwen-0.4b"]["parent"] == "qwen-0.5b-sft" and by_name["qwen-0.5b"]["parent"] is None
    assert _register(store, "by-id", stage="kd", parent=pruned.id).parent_id == pruned.id


def test_unknown_names_say_what_is_close(store):
    _register(store, "qwen2.5-coder-0.5b-instruct")
    with pytest.raises(NotFoundError) as caught:
        get_model_version(store, "qwen2.5-coder-0.5b")
    assert str(caught.value) == ("unknown model 'qwen2.5-coder-0.5b' "
                                 "(did you mean 'qwen2.5-coder-0.5b-instruct'?)")
    assert find_model_version(store, "nothing") is None
    with pytest.raises(NotFoundError, match="unknown parent model 'ghost'"):
        _register(store, "orphan", parent="ghost")


def test_register_an_hf_directory_counts_parameters_from_headers(store, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    row = register_external(store, tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert (row.name, row.stage, row.format) == ("tiny-student", "external", "hf")
    assert row.backend == "transformers" and row.config == {"source": {"kind": "hf", "model_type": "qwen2"}}
    assert row.path == str(tiny_model_dir.resolve())
    assert row.param_count == sum(param.numel() for param in model.parameters())
    assert row.size_bytes == (tiny_model_dir / "model.safetensors").stat().st_size
    assert register_external(store, tiny_model_dir, "tiny-2", parent="tiny-student").parent_id == row.id


def test_register_a_gguf_file(store, tiny_model_dir, tmp_path):
    import gguf

    path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny-q8.gguf")
    row = register_external(store, path)
    assert (row.name, row.format, row.backend, row.path) == ("tiny-q8", "gguf", "transformers", str(tmp_path))
    assert row.config == {"gguf_file": str(path)}
    expected = sum(math.prod(tensor.shape) for tensor in gguf.GGUFReader(str(path)).tensors)
    assert row.param_count == expected and row.size_bytes == path.stat().st_size


def test_register_an_openai_compatible_endpoint(store):
    row = register_external(store, "http://127.0.0.1:8000/v1/", served_model="Qwen/Qwen2.5-7B-Instruct",
                            api_key_env="VLLM_API_KEY")
    assert (row.name, row.format, row.backend, row.path) == (
        "Qwen/Qwen2.5-7B-Instruct", "openai", "openai", "http://127.0.0.1:8000/v1")
    assert row.config == {"model": "Qwen/Qwen2.5-7B-Instruct", "api_key_env": "VLLM_API_KEY"}
    named = register_external(store, "https://api.example.com/v1", "cloud-llm", served_model="gpt-4o")
    assert named.name == "cloud-llm" and named.config == {"model": "gpt-4o"} and named.param_count is None


@pytest.mark.parametrize(("location", "kwargs", "message"), [
    ("http://127.0.0.1:8000/v1", {}, "which model does http://127.0.0.1:8000/v1 serve"),
    ("ftp://example.com/model", {}, "unsupported URL"),
    ("/no/such/model", {}, "no such file or directory: /no/such/model"),
])
def test_bad_external_locations(store, location, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        register_external(store, location, **kwargs)


def test_a_directory_without_config_or_weights_is_refused(store, tmp_path, tiny_model_dir):
    with pytest.raises(InvalidInputError, match=r"no config\.json"):
        register_external(store, tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(InvalidInputError, match="no weights"):
        register_external(store, tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(InvalidInputError, match=r"neither a model directory nor a \.gguf file"):
        register_external(store, tmp_path / "notes.txt")


def test_open_model_resolves_names_and_paths_and_caches(sqlite_store, tiny_model_dir, tmp_path):
    from supertiny.runtime.loading import close_models, open_model, resolve_model

    register_external(sqlite_store, tiny_model_dir, "tiny")
    try:
        model = open_model(sqlite_store, "tiny")
        assert model.name == "tiny" and open_model(sqlite_store, "tiny") is model
        assert open_model(sqlite_store, "tiny", max_batch_size=2) is not model
        assert open_model(sqlite_store, str(tiny_model_dir)).name == tiny_model_dir.name
    finally:
        close_models()
    where = resolve_model(sqlite_store, "tiny")
    assert (where.backend, where.location, where.config) == ("transformers", str(tiny_model_dir.resolve()),
                                                             {"name": "tiny"})  # provenance is not passed on
    gguf_path = write_tiny_gguf(tiny_model_dir, tmp_path / "loose.gguf")
    where = resolve_model(sqlite_store, gguf_path)
    assert (where.location, where.config) == (str(tmp_path), {"gguf_file": str(gguf_path)})
    with pytest.raises(NotFoundError, match="unknown model 'tinyy'"):
        resolve_model(sqlite_store, "tinyy")
    with pytest.raises(NotFoundError, match="neither a registered model"):
        resolve_model(sqlite_store, tmp_path)
