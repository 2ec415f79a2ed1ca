"""GGUF export: the file llama.cpp reads (qwen2 metadata, the BPE tokenizer and chat template, each tensor in
the asked type and equal to the source within that type's precision), the ``gguf`` compressor's registry row
and command, and one clear error for what cannot be exported."""

import json
import shutil

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file
from supertiny.cli import cli
from supertiny.compress.gguf_config import GGUFConfig
from supertiny.compress.gguf_export import DEFAULT_HEAD_TYPES, export_gguf, gguf_tensor_name
from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.models.versions import get_model_version, register_external
from supertiny.runs.pipeline import compress_model
from supertiny.runtime.loading import close_models

TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
# q4_0: the searched scales may clip a block's largest weight by up to 20% when that lowers the block's error
TOLERANCE = {"f32": 0.0, "f16": 1e-3, "q8_0": 1e-2, "q4_0": 0.2}


@pytest.fixture
def env(sqlite_store, tmp_path, tiny_model_dir):
    register_external(sqlite_store, tiny_model_dir, name="student")
    settings = Settings(home=tmp_path / "home", database_url=sqlite_store.url)
    yield sqlite_store, settings
    close_models()


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("out_type", ["f32", "f16", "q8_0", "q4_0"])
def test_every_tensor_is_written_in_its_type_and_reads_back_as_the_source(tiny_model_dir, tmp_path, out_type):
    export = export_gguf(tiny_model_dir, tmp_path / "tiny.gguf", out_type)
    source = load_file(str(tiny_model_dir / "model.safetensors"))
    reader = gguf.GGUFReader(str(export.path))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert set(tensors) == {gguf_tensor_name(name) for name in source}
    assert export.tensors == len(source) and export.param_count == sum(array.size for array in source.values())
    for hf_name, array in source.items():
        tensor = tensors[gguf_tensor_name(hf_name)]
        expected_type = TYPES[out_type] if array.ndim == 2 else gguf.GGMLQuantizationType.F32
        if hf_name == "lm_head.weight":
            expected_type = TYPES[DEFAULT_HEAD_TYPES.get(out_type, out_type)]
        assert tensor.tensor_type == expected_type, hf_name
        assert list(reversed(tensor.shape.tolist())) == list(array.shape), hf_name
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(array.shape)
        scale = float(np.abs(array).max())
        assert float(np.abs(data - array).max()) <= TOLERANCE[out_type] * scale, hf_name


def test_q4_0_keeps_the_head_at_q8_0_and_is_smaller_than_q8_0(tiny_model_dir, tmp_path):
    q4 = export_gguf(tiny_model_dir, tmp_path / "q4.gguf", "q4_0")
    q8 = export_gguf(tiny_model_dir, tmp_path / "q8.gguf", "q8_0")
    assert q4.size_bytes < q8.size_bytes and q4.param_count == q8.param_count
    reader = gguf.GGUFReader(str(q4.path))
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_0
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["output.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q4_0
    same_head = gguf.GGUFReader(str(export_gguf(tiny_model_dir, tmp_path / "q4h.gguf", "q4_0",
                                                head_type="q4_0").path))
    assert {tensor.name: tensor.tensor_type for tensor in same_head.tensors}["output.weight"] == TYPES["q4_0"]


def _tied_copy(tiny_model_dir, tmp_path):
    """The tiny model without its lm_head: a model whose head is its input embedding."""
    model_dir = tmp_path / "tied"
    shutil.copytree(tiny_model_dir, model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return model_dir


def test_a_tied_embedding_is_the_head_and_gets_the_head_type(tiny_model_dir, tmp_path):
    model_dir = _tied_copy(tiny_model_dir, tmp_path)
    reader = gguf.GGUFReader(str(export_gguf(model_dir, tmp_path / "tied.gguf", "q4_0").path))
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["token_embd.weight"] == TYPES["q8_0"] and types["blk.1.attn_q.weight"] == TYPES["q4_0"]


def test_rows_that_do_not_split_into_32_wide_blocks_are_written_f16(tmp_path):
    from supertiny.testing import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "odd", intermediate_size=120)  # ffn_down rows are 120 wide
    reader = gguf.GGUFReader(str(export_gguf(model_dir, tmp_path / "odd.gguf", "q4_0").path))
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_up.weight"] == TYPES["q4_0"]


def test_metadata_tokenizer_and_chat_template_are_llama_cpp_s(tiny_model_dir, tmp_path):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    reader = gguf.GGUFReader(str(export_gguf(tiny_model_dir, tmp_path / "tiny.gguf", "q8_0", name="tiny").path))
    assert _field(reader, "general.architecture") == "qwen2" and _field(reader, "general.name") == "tiny"
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert _field(reader, "qwen2.block_count") == config["num_hidden_layers"]
    assert _field(reader, "qwen2.embedding_length") == config["hidden_size"]
    assert _field(reader, "qwen2.attention.head_count_kv") == config["num_key_value_heads"]
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"  # the tiny tokenizer's plain byte-level split
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"] and tokens[config["eos_token_id"]] == "<|im_end|>"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[config["eos_token_id"]] == gguf.TokenType.CONTROL and types[300] == gguf.TokenType.NORMAL
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(tokenizer["model"]["merges"])
    assert _field(reader, "tokenizer.chat_template") == (tiny_model_dir / "chat_template.jinja").read_text()


def test_the_qwen2_pre_tokenizer_is_recognised(tiny_model_dir, tmp_path):
    from supertiny.compress.gguf_export import QWEN2_SPLIT

    model_dir = tmp_path / "qwen-split"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    reader = gguf.GGUFReader(str(export_gguf(model_dir, tmp_path / "q.gguf", "f16").path))
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"


def test_a_tied_head_is_not_written(tiny_model_dir, tmp_path):
    model_dir = _tied_copy(tiny_model_dir, tmp_path)
    reader = gguf.GGUFReader(str(export_gguf(model_dir, tmp_path / "tied.gguf", "q8_0").path))
    names = {tensor.name for tensor in reader.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_the_compressor_registers_the_gguf_with_its_tokenizer_beside_it(env, tiny_model_dir):
    store, settings = env
    result = compress_model(store, settings, "gguf", model="student", config=GGUFConfig(type="q8_0"))
    row = get_model_version(store, "student-gguf-q8_0")
    assert result.name == row.name and row.stage == "quantized" and row.algorithm == "gguf"
    assert (row.format, row.backend) == ("gguf", "llama-cpp")
    path = settings.models_dir / row.name / f"{row.name}.gguf"
    assert row.path == str(path) and result.path == str(path) and path.is_file()
    assert row.size_bytes == path.stat().st_size < get_model_version(store, "student").size_bytes
    assert row.parent_id == get_model_version(store, "student").id
    assert row.config["source"]["options"]["type"] == "q8_0" and row.metrics["type"] == "q8_0"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (path.parent / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert not list(path.parent.glob("*.partial"))


def test_compress_gguf_command(register_plugin, tmp_path, tiny_model_dir):
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args):
        return CliRunner().invoke(cli, ["--db", url, "--home", str(tmp_path / "home"), *args])

    try:
        assert run("models", "register", str(tiny_model_dir), "--name", "student").exit_code == 0
        assert "gguf" in run("compress", "--help").output
        result = run("compress", "gguf", "--model", "student", "--type", "f16", "--name", "s16", "--no-speed",
                     "--json")
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output[result.output.index("{"):])
        assert payload["result"]["backend"] == "llama-cpp" and payload["result"]["path"].endswith("s16.gguf")
        assert [row["name"] for row in payload["models"]] == ["student", "s16"]
        assert "q4_0" in run("compress", "gguf", "--help").output
        unknown = run("compress", "gguf", "--model", "student", "--type", "q4_k")
        assert unknown.exit_code == 2 and "'q4_k' is not one of" in unknown.output
    finally:
        close_models()


def test_an_unknown_type_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match=r"unknown GGUF type 'q4_k'.*f32, f16, q8_0, q4_0"):
        export_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_k")
    with pytest.raises(InvalidInputError, match="unknown GGUF type"):
        GGUFConfig(type="int8").validate()
    GGUFConfig(type="q4_0").validate()
    assert not (tmp_path / "x.gguf").exists()


def test_an_unsupported_architecture_is_one_clear_error(env, tiny_model_dir, tmp_path):
    store, settings = env
    model_dir = tmp_path / "neox"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(InvalidInputError, match=r"does not support gpt_neox models.*supported architectures: qwen2"):
        export_gguf(model_dir, tmp_path / "neox.gguf")
    register_external(store, model_dir, name="neox")
    with pytest.raises(InvalidInputError, match="gpt_neox"):
        compress_model(store, settings, "gguf", model="neox")
    assert not (settings.models_dir / "neox-gguf-q8_0").exists()


def test_a_tensor_outside_the_qwen2_layout_is_refused(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "extra"
    shutil.copytree(tiny_model_dir, model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    state["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, dtype=np.float32)  # Qwen3's, say
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InvalidInputError, match=r"does not know the tensor 'model.layers.0.self_attn.q_norm"):
        export_gguf(model_dir, tmp_path / "extra.gguf")


def test_a_directory_without_weights_or_config_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match=r"no config.json"):
        export_gguf(tmp_path, tmp_path / "none.gguf")
    model_dir = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(InvalidInputError, match="no safetensors weights"):
        export_gguf(model_dir, tmp_path / "none.gguf")
