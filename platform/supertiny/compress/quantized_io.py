"""The on-disk format of a weight-only quantized model, and loading it back.

A directory like an HF model directory, plus a manifest:

    config.json                   the model's HF config (dtype = the compute dtype)
    generation_config.json, tokenizer files, chat_template.jinja
    quantization.json             {"format": "supertiny-quantized", "version": 1, "scheme", "group_size",
                                   "compute_dtype", "int8": [...], "int4": [...], "embedding", "tied_head",
                                   "weights"}: which modules are quantized, how
    model.quantized.safetensors   int8 / packed int4 weights, their scales (and zero points), the rest

The weights file is deliberately not called ``model.safetensors``: plain ``from_pretrained`` cannot
read it and says there is no model file, instead of loading int8 codes as if they were weights. The
``transformers-quantized`` backend (:mod:`supertiny.compress.quantized_backend`) loads it: the model
class is built from ``config.json`` without initialising weights, the named modules are swapped for
their quantized versions, and the state dict is loaded into them.
"""

import json
import shutil
from pathlib import Path
from typing import Any

from supertiny.errors import ModelError

MANIFEST = "quantization.json"
WEIGHTS = "model.quantized.safetensors"
FORMAT = "supertiny-quantized"
VERSION = 1


def is_quantized_dir(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory} is not a quantized model directory (no readable {MANIFEST})") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ModelError(f"{directory / MANIFEST} is not a {FORMAT} v{VERSION} manifest")
    return manifest


def save_quantized(model: Any, tokenizer: Any, manifest: dict[str, Any], directory: Path, compute_dtype: str) -> Path:
    """Write the quantized model (from :func:`supertiny.compress.quantized.quantize_modules`) to
    ``directory``: into a temporary directory first, renamed once complete."""
    tied_head = manifest.get("tied_head")
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()
             if not (tied_head and key.startswith(tied_head + "."))}  # a tied head is the embedding's table
    full = {"format": FORMAT, "version": VERSION, "compute_dtype": compute_dtype, "weights": WEIGHTS, **manifest}
    return write_model_directory(model, tokenizer, state, directory, WEIGHTS, compute_dtype,
                                 {MANIFEST: json.dumps(full, indent=2) + "\n"})


def write_model_directory(model: Any, tokenizer: Any, state: dict[str, Any], directory: Path, weights: str,
                          compute_dtype: str, files: dict[str, str] | None = None) -> Path:
    """``state`` as ``weights``, the model's config (its dtype the compute dtype) and generation config, the
    tokenizer and ``files`` (name: text) in ``directory``: written to a temporary directory, renamed once
    complete, so an interrupted save leaves no half-written model."""
    import torch
    from safetensors.torch import save_file

    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(state, str(partial / weights), metadata={"format": "pt"})
    model.config.dtype = getattr(torch, compute_dtype)
    model.config.use_cache = True
    model.config.save_pretrained(partial)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    for name, text in (files or {}).items():
        (partial / name).write_text(text)
    if directory.exists():
        shutil.rmtree(directory)
    partial.rename(directory)
    return directory


def load_weights(directory: Path, weights: str) -> dict[str, Any]:
    """The tensors of ``directory / weights``, or a ModelError naming the file when it is missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(directory / weights))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read the weights {directory / weights}: {exc}",
                         hint="quantize the model again") from exc


def finish_loading(model: Any, state: dict[str, Any], directory: Path, tied: set[str]) -> Any:
    """``model`` with ``state`` loaded (``tied``: keys a tied head may lack), its generation config, in eval
    mode; a ModelError when the weights do not fit the config."""
    from transformers import GenerationConfig

    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise ModelError(f"the weights in {directory} do not fit its config: missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    model.requires_grad_(False)
    return model.eval()


def load_quantized(directory: Path) -> Any:
    """The quantized causal LM saved in ``directory``, in eval mode on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from supertiny.artifacts.hardware import fast_dtype
    from supertiny.compress.quantized import build_skeleton, tie_quantized_head

    manifest = read_manifest(directory)
    dtype = getattr(torch, manifest["compute_dtype"])
    # bf16 activations are emulated on CPUs without native bf16: the model runs in fp32 around the int kernels
    activation_dtype = getattr(torch, fast_dtype(manifest["compute_dtype"]))
    try:
        config = AutoConfig.from_pretrained(directory)
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=activation_dtype)
        build_skeleton(model, manifest, dtype, activation_dtype)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"cannot load the quantized model in {directory}: {exc}") from exc
    state = load_weights(directory, manifest["weights"])
    tied = {f"{manifest['tied_head']}.weight", f"{manifest['tied_head']}.weight_scale"} \
        if manifest.get("tied_head") else set()
    model = finish_loading(model, state, directory, tied)
    tie_quantized_head(model, manifest)
    return model
