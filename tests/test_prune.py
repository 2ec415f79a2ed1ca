"""Structured pruning on tiny models: shapes stay consistent (GQA included), removing only structures
that contribute nothing leaves the logits unchanged, the result reloads with plain transformers, the
budget is met, and bad input is refused before any weight loads."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import toy_domain
from helpers.training import harvest_snapshot
from supertiny.artifacts import weights
from supertiny.compress.prune_config import PruneConfig
from supertiny.compress.structure import Shape, parse_param_count, solve_shape
from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.models.versions import get_model_version, register_external
from supertiny.runs.pipeline import compress_model
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture
def env(sqlite_store, register_plugin, tmp_path, tiny_model_dir):
    register_plugin(toy_domain, name="toy-domains")
    register_external(sqlite_store, tiny_model_dir, name="student")
    settings = Settings(home=tmp_path / "home", database_url=sqlite_store.url)
    return sqlite_store, settings


def _ids(path, text="Weather in Oslo in celsius?"):
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tools=[toy_domain.WEATHER_TOOL],
                                           add_generation_prompt=True, tokenize=False)
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids


def _logits(path, ids):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _edited_copy(source, target, edit):
    """A copy of the model at ``source`` with ``edit(model)`` applied to its weights."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def _tiny(tmp_path, name, model_class="Qwen2ForCausalLM", tied=False, layers=2, **extra):
    """A tiny causal LM of another class or with a tied head, with the test tokenizer."""
    import transformers
    from supertiny.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config_class = getattr(transformers, model_class.replace("ForCausalLM", "Config"))
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=tied, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(3)
    model = getattr(transformers, model_class)(config)
    model.save_pretrained(tmp_path / name)
    tokenizer.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_a_zero_ratio_keeps_the_model_exactly(env):
    store, settings = env
    result = compress_model(store, settings, "prune", model="student",
                            config=PruneConfig(ratio=0.0, importance="magnitude"), name="same")
    source = get_model_version(store, "student")
    ids = _ids(source.path)
    assert torch.equal(_logits(source.path, ids), _logits(result.path, ids))
    assert result.param_count == source.param_count and result.metrics["removed_fraction"] == 0


def _dead_channels_and_group(model):
    """48 of the 128 MLP channels (0, 3, 6, ... and 1, 2, 4, 5, 7) and key/value group 1 (query heads 2 and
    3) of every layer write nothing into the residual stream."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    for layer in model.model.layers:
        dead = torch.cat([torch.arange(0, 128, 3), torch.tensor([1, 2, 4, 5, 7])])
        layer.mlp.gate_proj.weight[dead] = 0
        layer.mlp.up_proj.weight[dead] = 0
        layer.mlp.down_proj.weight[:, dead] = 0
        layer.self_attn.o_proj.weight[:, 2 * head_dim:] = 0


@pytest.mark.parametrize("importance", ["activation", "magnitude"])
def test_removing_structures_that_write_nothing_keeps_the_logits(env, tmp_path, importance):
    store, settings = env
    harvest_snapshot(store, "weather")
    source = _edited_copy(get_model_version(store, "student").path, tmp_path / "dead", _dead_channels_and_group)
    register_external(store, source, name="dead")
    shape = Shape.of(AutoModelForCausalLM.from_pretrained(source))
    target = solve_shape(shape, shape.param_count(), 0, 1, False, 16)
    target = target.param_count() - target.per_mlp_channel() * 48  # MLP width 80: the live channels only
    result = compress_model(store, settings, "prune", model="dead", data="weather", name=f"live-{importance}",
                            config=PruneConfig(target_params=str(target), drop_kv_groups=1, importance=importance))
    config = json.loads((Path(result.path) / "config.json").read_text())
    assert (config["intermediate_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (80, 2, 1)
    assert config["head_dim"] == 16 and result.param_count == target
    if importance == "activation":
        assert result.metrics["calibration_sequences"] > 0 and result.metrics["calibration_tokens"] > 0
    ids = _ids(source)
    torch.testing.assert_close(_logits(source, ids), _logits(result.path, ids), atol=1e-5, rtol=1e-5)


def test_a_layer_that_changes_nothing_is_the_one_removed(env, tmp_path):
    store, settings = env
    harvest_snapshot(store, "weather")
    three = _tiny(tmp_path, "three", layers=3)

    def make_layer_1_an_identity(model):
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()

    source = _edited_copy(three, tmp_path / "three-id", make_layer_1_an_identity)
    register_external(store, source, name="three")
    total = get_model_version(store, "three").param_count
    result = compress_model(store, settings, "prune", model="three", data="weather", name="two",
                            config=PruneConfig(target_params=str(total), drop_layers=1))
    assert result.metrics["removed_layers"] == [1] and result.metrics["block_influence"][1] == pytest.approx(0)
    model = AutoModelForCausalLM.from_pretrained(result.path)
    assert model.config.num_hidden_layers == 2 and len(model.config.layer_types) == 2
    ids = _ids(source)
    torch.testing.assert_close(_logits(source, ids), _logits(result.path, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", ["Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"])
def test_pruned_models_keep_a_valid_gqa_layout_reload_and_generate(env, tmp_path, model_class):
    store, settings = env
    harvest_snapshot(store, "weather")
    register_external(store, _tiny(tmp_path, model_class, model_class=model_class), name="src")
    result = compress_model(store, settings, "prune", model="src", data="weather", name="small",
                            config=PruneConfig(ratio=0.3, drop_kv_groups=1))
    model = AutoModelForCausalLM.from_pretrained(result.path)
    config = model.config
    assert type(model).__name__ == model_class
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    assert config.intermediate_size % 16 == 0
    for layer in model.model.layers:
        attention = layer.self_attn
        assert attention.q_proj.out_features == 2 * 16 and attention.k_proj.out_features == 16
        assert attention.o_proj.in_features == 2 * 16
        assert layer.mlp.down_proj.in_features == layer.mlp.gate_proj.out_features == config.intermediate_size
    assert sum(p.numel() for p in model.parameters()) == result.param_count <= 0.7 * Shape.of(
        AutoModelForCausalLM.from_pretrained(tmp_path / model_class)).param_count()
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert tokenizer.chat_template and (tmp_path / "home" / "models" / "small" / "generation_config.json").is_file()
    ids = _ids(result.path)
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]


def test_a_tied_head_stays_tied_and_counts_once(env, tmp_path):
    store, settings = env
    register_external(store, _tiny(tmp_path, "tied", tied=True), name="tied")
    source = get_model_version(store, "tied")
    assert Shape.of(AutoModelForCausalLM.from_pretrained(source.path)).param_count() == source.param_count
    result = compress_model(store, settings, "prune", model="tied", name="tied-small",
                            config=PruneConfig(ratio=0.1, importance="magnitude"))
    model = AutoModelForCausalLM.from_pretrained(result.path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert result.param_count == sum(p.numel() for p in model.parameters()) <= 0.9 * source.param_count


def test_the_registry_row_has_lineage_counts_and_bytes(env):
    store, settings = env
    snapshot = harvest_snapshot(store, "weather")
    result = compress_model(store, settings, "prune", model="student", data="weather",
                            config=PruneConfig(target_params="120k"))
    row = get_model_version(store, result.name)
    assert row.name == "student-pruned-120k" and (row.stage, row.algorithm, row.format) == ("pruned", "prune", "hf")
    assert row.parent_id == get_model_version(store, "student").id and row.dataset_id == snapshot.id
    assert row.param_count == weights.count_safetensors_parameters(Path(row.path)) <= 120_000
    assert row.size_bytes == weights.weights_size(Path(row.path)) > 0
    assert row.config["source"]["options"]["target_params"] == "120k" and row.config["source"]["data"] == "weather@1"
    assert row.metrics["intermediate_size"] % 16 == 0


def test_param_counts_read_like_people_write_them():
    assert parse_param_count("0.4B") == parse_param_count("400M") == parse_param_count("400000000") == 400_000_000
    assert parse_param_count("4e8") == parse_param_count("400_000_000") == 400_000_000
    assert parse_param_count("120k") == 120_000
    with pytest.raises(InvalidInputError, match="cannot read 'lots' as a parameter count"):
        parse_param_count("lots")


def test_the_real_student_shape_solves_to_0_4b():
    student = Shape(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                    intermediate_size=4864, tied=True, qkv_bias=True)
    assert student.param_count() == 494_032_768  # Qwen2.5-0.5B with its tied embedding counted once
    pruned = solve_shape(student, 400_000_000, 0, 0, True, 16)
    assert pruned.intermediate_size == 3392 and 399_000_000 < pruned.param_count() <= 400_000_000
    fewer_layers = solve_shape(student, 400_000_000, 4, 0, True, 16)
    assert fewer_layers.num_layers == 20 and fewer_layers.intermediate_size > pruned.intermediate_size
    with pytest.raises(InvalidInputError, match="even an MLP width of 16 leaves"):
        solve_shape(student, 150_000_000, 0, 0, True, 16)


def test_a_target_above_the_model_is_refused(env):
    store, settings = env
    with pytest.raises(InvalidInputError, match=r"target of 1,000,000,000 parameters is more than model 'student'"):
        compress_model(store, settings, "prune", model="student", config=PruneConfig(target_params="1B"))


def test_an_unknown_architecture_is_refused_naming_the_supported_ones(env, tmp_path):
    store, settings = env
    other = tmp_path / "other"
    shutil.copytree(get_model_version(store, "student").path, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    register_external(store, other, name="other")
    with pytest.raises(InvalidInputError, match=r"architecture 'gpt2' is not supported \(supported: qwen2, llama, "
                                                r"mistral"):
        compress_model(store, settings, "prune", model="other", config=PruneConfig(ratio=0.1, importance="magnitude"))


def test_a_snapshot_of_another_domain_is_refused(env):
    store, settings = env
    harvest_snapshot(store, "weather")
    with pytest.raises(InvalidInputError, match="snapshot weather@1 holds toy-weather records, not domain 'toy-al"):
        compress_model(store, settings, "prune", model="student", data="weather", domain="toy-alerts",
                       config=PruneConfig(ratio=0.1))


@pytest.mark.parametrize(("config", "message"), [
    (PruneConfig(ratio=0.1), "--importance activation needs calibration data: give --data SNAPSHOT"),
    (PruneConfig(ratio=0.1, importance="magnitude", drop_layers=1), "removing layers needs calibration data"),
    (PruneConfig(), "give either --target-params or --ratio"),
    (PruneConfig(ratio=0.1, target_params="1M"), "give either --target-params or --ratio"),
    (PruneConfig(ratio=1.0), r"--ratio must be in \[0, 1\)"),
    (PruneConfig(ratio=0.1, importance="magnitude", drop_kv_groups=2), "cannot drop 2 of 2 key/value groups"),
    (PruneConfig(ratio=0.9, importance="magnitude"), "cannot reach"),
])
def test_bad_options_are_refused(env, config, message):
    store, settings = env
    with pytest.raises(InvalidInputError, match=message):
        compress_model(store, settings, "prune", model="student", config=config)
