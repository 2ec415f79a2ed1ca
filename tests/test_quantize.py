"""Weight-only quantization on tiny models: the kernels compute what the stored codes say, a quantized model
round-trips through its directory and the transformers-quantized backend with logits close to the
original's, a tied head stays one table, and the registry row says what was made from what."""

import json
from pathlib import Path

import pytest
import torch
from helpers import toy_domain
from supertiny.compress.quantize_config import QuantizeConfig
from supertiny.compress.quantized import Int4Linear, Int8Linear
from supertiny.compress.quantized_io import MANIFEST, WEIGHTS
from supertiny.config import Settings
from supertiny.errors import InvalidInputError, ModelError
from supertiny.models.versions import get_model_version, register_external
from supertiny.registry import get_backends
from supertiny.runs.pipeline import compress_model
from supertiny.runtime.loading import close_models, open_model
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture
def env(sqlite_store, tmp_path, tiny_model_dir):
    register_external(sqlite_store, tiny_model_dir, name="student")
    settings = Settings(home=tmp_path / "home", database_url=sqlite_store.url)
    yield sqlite_store, settings
    close_models()


def _ids(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Lima in celsius?"}],
                                           tools=[toy_domain.WEATHER_TOOL], add_generation_prompt=True, tokenize=False)
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids


def _reference_logits(path, ids):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_computes_with_its_dequantized_weight(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    quantized = Int8Linear.from_linear(linear, dtype)
    x = torch.randn(3, 5, 64)
    expected = x @ quantized.dequantized().T + linear.bias.detach()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(quantized(x.to(dtype)).float(), expected, atol=tolerance, rtol=tolerance)
    assert (quantized.dequantized() - linear.weight).abs().max() <= quantized.weight_scale.float().max() / 2 + 1e-6


@pytest.mark.parametrize("rows", [1, 40])  # the kernel in bf16 / the dequantized fp32 matmul
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_fp32_activations_over_bf16_scales_give_the_dequantized_product_in_fp32(rows, scheme):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 32, bias=scheme == "int8")
    quantized = Int8Linear.from_linear(linear, torch.bfloat16) if scheme == "int8" \
        else Int4Linear.from_linear(linear, torch.bfloat16, 32)
    x = torch.randn(rows, 128)
    bias = linear.bias.detach().bfloat16().float() if linear.bias is not None else 0  # stored like the scales
    expected = x @ quantized.dequantized().T + bias
    out = quantized(x)
    assert out.dtype == torch.float32
    tolerance = 1e-4 if rows > 16 else 5e-2
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("native", ["0", "1"])
def test_a_bf16_quantized_model_runs_in_fp32_where_bf16_is_emulated(env, monkeypatch, native):
    store, settings = env
    monkeypatch.setenv("SUPERTINY_CPU_BF16", native)
    result = compress_model(store, settings, "quantize", model="student", config=QuantizeConfig())
    chat = get_backends()["transformers-quantized"].open(result.path, {"threads": 1})
    expected = torch.float32 if native == "0" else torch.bfloat16
    assert chat.model.get_input_embeddings()(torch.tensor([[1, 2]])).dtype == expected
    assert chat.model.model.norm.weight.dtype == expected
    ids = _ids(get_model_version(store, "student").path)
    with torch.no_grad():
        logits = chat.model(ids).logits[0].float()
    reference = _reference_logits(get_model_version(store, "student").path, ids)
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_linear_computes_with_its_dequantized_weight(group_size):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 32, bias=False)
    quantized = Int4Linear.from_linear(linear, torch.bfloat16, group_size)
    x = torch.randn(4, 128)
    expected = x @ quantized.dequantized().T
    torch.testing.assert_close(quantized(x.bfloat16()).float(), expected, atol=5e-2, rtol=5e-2)
    step = quantized.weight_scale.float().max()
    assert (quantized.dequantized() - linear.weight).abs().max() <= step / 2 + 1e-3


def test_int8_round_trip_gives_close_logits_through_the_backend(env):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="student",
                            config=QuantizeConfig(compute_dtype="float32"))
    source = get_model_version(store, "student")
    assert result.name == "student-int8" and result.metrics["probe_top1_agreement"] >= 0.95
    chat = get_backends()["transformers-quantized"].open(result.path, {"threads": 1})
    ids = _ids(source.path)
    with torch.no_grad():
        logits = chat.model(ids).logits[0]
    reference = _reference_logits(source.path, ids)
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    answer = chat.generate([{"role": "user", "content": "Weather in Oslo?"}], [toy_domain.WEATHER_TOOL])
    assert answer.completion_tokens > 0 and answer.token_logprobs


def test_int4_round_trip_keeps_layers_the_kernel_cannot_take_in_int8(env):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="student",
                            config=QuantizeConfig(scheme="int4", group_size=32))
    manifest = json.loads((Path(result.path) / MANIFEST).read_text())
    assert result.name == "student-int4-g32" and manifest["scheme"] == "int4" and manifest["group_size"] == 32
    assert "lm_head" in manifest["int8"]  # 529 output rows: not a multiple of 16
    assert len(manifest["int4"]) == 14
    chat = open_model(store, result.name)
    ids = _ids(get_model_version(store, "student").path)
    with torch.no_grad():
        logits = chat.model(ids).logits[0].float()
    reference = _reference_logits(get_model_version(store, "student").path, ids)
    assert torch.nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0) > 0.98


@pytest.fixture
def tied(env, tmp_path):
    """A tiny model whose output head is its input embedding."""
    from supertiny.testing import build_tiny_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    store, _ = env
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    register_external(store, tmp_path / "tied", name="tied")
    return tmp_path / "tied"


def test_a_tied_head_shares_the_int8_embedding_table(env, tied, tmp_path):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="tied", config=QuantizeConfig(compute_dtype="float32"))
    from safetensors import safe_open

    with safe_open(str(Path(result.path) / WEIGHTS), "pt") as handle:
        keys = set(handle.keys())
    assert "model.embed_tokens.weight" in keys and not any(key.startswith("lm_head") for key in keys)
    chat = open_model(store, result.name)
    assert chat.model.lm_head.weight is chat.model.model.embed_tokens.weight
    ids = _ids(tmp_path / "tied")
    with torch.no_grad():
        logits = chat.model(ids).logits[0]
    reference = _reference_logits(tmp_path / "tied", ids)
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95


def test_the_registry_row_and_the_bytes(env):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="student", name="q8")
    row, source = get_model_version(store, "q8"), get_model_version(store, "student")
    assert (row.stage, row.format, row.backend, row.algorithm) == ("quantized", "quantized", "transformers-quantized",
                                                                   "quantize")
    assert row.parent_id == source.id and row.dataset_id is None
    assert row.param_count == source.param_count == result.param_count
    assert 0 < row.size_bytes < 0.3 * source.size_bytes  # fp32 source -> int8
    assert row.config["source"]["options"]["scheme"] == "int8"
    assert open_model(store, "q8").backend == "transformers-quantized"


def test_plain_transformers_does_not_mistake_the_codes_for_weights(env):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="student")
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(result.path)


def test_bad_input_is_refused(env, tmp_path):
    store, settings = env
    compress_model(store, settings, "quantize", model="student", name="q")
    with pytest.raises(InvalidInputError, match="model 'q' is already quantized"):
        compress_model(store, settings, "quantize", model="q")
    with pytest.raises(InvalidInputError, match="--group-size must be one of 32, 64, 128, 256"):
        compress_model(store, settings, "quantize", model="student", config=QuantizeConfig(group_size=48))
    with pytest.raises(InvalidInputError, match="quantize takes no --data"):
        compress_model(store, settings, "quantize", model="student", data="weather")
    with pytest.raises(ModelError, match="not a quantized model directory"):
        get_backends()["transformers-quantized"].open(str(get_model_version(store, "student").path), {})
    with pytest.raises(InvalidInputError, match="unknown transformers-quantized backend option"):
        get_backends()["transformers-quantized"].open(str(tmp_path), {"dtype": "float32"})


def test_a_skipped_tied_head_keeps_its_own_table(env, tied):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="tied", name="tied-q",
                            config=QuantizeConfig(skip="lm_head", compute_dtype="float32"))
    manifest = json.loads((Path(result.path) / MANIFEST).read_text())
    assert manifest["tied_head"] is None and "lm_head" not in manifest["int8"]
    chat = open_model(store, "tied-q")
    assert isinstance(chat.model.lm_head, torch.nn.Linear) and chat.model.lm_head.weight.dtype == torch.float32
    ids = _ids(tied)
    with torch.no_grad():
        logits = chat.model(ids).logits[0]
    assert (logits.argmax(-1) == _reference_logits(tied, ids).argmax(-1)).float().mean() >= 0.95


def test_w8a8_writes_a_compressed_tensors_checkpoint_that_loads_back_in_process(env, tied):
    from safetensors import safe_open
    from supertiny.compress.compressed_tensors_io import WEIGHTS as W8A8_WEIGHTS

    store, settings = env
    result = compress_model(store, settings, "quantize", model="tied", config=QuantizeConfig(scheme="w8a8"))
    row = get_model_version(store, result.name)
    assert (result.name, row.format, row.backend, row.stage) == ("tied-w8a8", "compressed-tensors",
                                                                 "transformers-quantized", "quantized")
    config = json.loads((Path(result.path) / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"], config["ignore"]) == ("compressed-tensors", "int-quantized",
                                                                          ["lm_head"])
    group = config["config_groups"]["group_0"]
    assert (group["weights"]["strategy"], group["input_activations"]["strategy"],
            group["input_activations"]["dynamic"]) == ("channel", "token", True)
    with safe_open(str(Path(result.path) / W8A8_WEIGHTS), "pt") as handle:
        weight, scale = (handle.get_tensor(f"model.layers.0.mlp.up_proj.{key}") for key in ("weight", "weight_scale"))
        assert weight.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (weight.shape[0], 1)
        assert torch.equal(scale, scale.bfloat16().float())  # exact in bf16, as the in-process kernel holds it
        assert handle.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        keys = handle.keys()
    assert not any(key.startswith("lm_head") for key in keys)  # tied: the embedding's table
    assert result.metrics["probe_top1_agreement"] >= 0.9  # with the activations rounded as the engine rounds them
    chat = open_model(store, result.name)
    assert isinstance(chat.model.model.layers[0].mlp.up_proj, Int8Linear)
    assert chat.model.lm_head.weight is chat.model.model.embed_tokens.weight
    ids = _ids(tied)
    with torch.no_grad():
        logits = chat.model(ids).logits[0].float()
    assert (logits.argmax(-1) == _reference_logits(tied, ids).argmax(-1)).float().mean() >= 0.9
    answer = chat.generate([{"role": "user", "content": "Weather in Oslo?"}], [toy_domain.WEATHER_TOOL])
    assert answer.completion_tokens > 0


def test_a_w8a8_model_is_refused_as_a_source_and_another_compressed_tensors_scheme_in_process(env, tied):
    store, settings = env
    result = compress_model(store, settings, "quantize", model="tied", config=QuantizeConfig(scheme="w8a8"))
    with pytest.raises(InvalidInputError, match="model 'tied-w8a8' is already quantized"):
        compress_model(store, settings, "quantize", model="tied-w8a8")
    config_path = Path(result.path) / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="other than W8A8 int8 per channel"):
        get_backends()["transformers-quantized"].open(result.path, {})


@pytest.mark.parametrize("scheme", ["int8", "w8a8"])
def test_a_corrupt_weights_file_is_one_clear_error(env, scheme):
    from supertiny.compress.compressed_tensors_io import WEIGHTS as W8A8_WEIGHTS

    store, settings = env
    result = compress_model(store, settings, "quantize", model="student", config=QuantizeConfig(scheme=scheme))
    weights = Path(result.path) / (W8A8_WEIGHTS if scheme == "w8a8" else WEIGHTS)
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(ModelError, match="cannot read the weights"):
        get_backends()["transformers-quantized"].open(result.path, {})
