"""``prune``: structured pruning of a Llama-layout causal LM (Qwen2, Llama, Mistral) to a parameter budget.

1. The budget (``--target-params`` or ``--ratio``) and the explicit removals (``--drop-layers``,
   ``--drop-kv-groups``) give the new shape; the MLP width is solved as the widest multiple of
   ``--multiple-of`` that meets the budget (:func:`supertiny.compress.structure.solve_shape`).
2. The snapshot's conversations calibrate the importance of every channel, group and layer
   (:mod:`supertiny.compress.calibration`, :mod:`supertiny.compress.importance`), one shot on the
   unpruned model.
3. The most important structures are kept and the result is saved as a plain HF directory (bf16 when
   the source is bf16) with the tokenizer, chat template and generation config.

A pruned model loses accuracy; ``supertiny train heal`` distils it back towards its parent.
"""

import time
from typing import Any

from supertiny.compress.base import CompressContext, Compressor
from supertiny.compress.prune_config import PruneConfig
from supertiny.errors import InvalidInputError
from supertiny.runs.algorithm import Produced


class PruneCompressor(Compressor):
    name = "prune"
    description = "structured pruning (MLP channels, GQA key/value groups, layers) to a parameter budget"
    config_class = PruneConfig
    stage = "pruned"
    data = "optional"
    data_help = ("Snapshot whose conversations calibrate the importance (the domain's own traffic); needed "
                 "unless --importance magnitude.")

    def name_suffix(self, config: PruneConfig) -> str:  # type: ignore[override]
        budget = f"r{config.ratio:g}" if config.ratio is not None else str(config.target_params).lower()
        return f"pruned-{budget}"

    def check(self, context: CompressContext) -> None:
        from supertiny.compress.structure import check_model_type, read_model_type

        config: PruneConfig = context.config  # type: ignore[assignment]
        what = f"model {context.source.name!r}"
        if not context.source_ref.gguf_file:  # a GGUF directory has no config.json: checked once loaded
            check_model_type(read_model_type(context.source_ref.path), what)
        if context.source.param_count:
            _check_target(config, context.source.param_count, what)
        if config.needs_data and context.dataset is None:
            reason = "removing layers" if config.drop_layers else "--importance activation"
            raise InvalidInputError(f"{reason} needs calibration data: give --data SNAPSHOT",
                                    hint="or prune by weight magnitude only: --importance magnitude")
        if context.dataset is not None and not context.items(config.calibration_split):
            raise InvalidInputError(f"snapshot {context.dataset.name}@{context.dataset.version} has no record in "
                                    f"split {config.calibration_split!r}", hint="choose another --calibration-split")

    def compress(self, context: CompressContext) -> Produced:
        from supertiny.artifacts.facts import DTYPE_BYTES, compute_dtype, model_facts
        from supertiny.artifacts.hf import load_model, load_tokenizer, save_model, set_threads
        from supertiny.compress.calibration import calibration_sequences, collect_statistics
        from supertiny.compress.importance import choose_plan
        from supertiny.compress.structure import Shape, apply_plan, check_model_type, solve_shape

        config: PruneConfig = context.config  # type: ignore[assignment]
        set_threads(config.threads)
        ref = context.source_ref
        started = time.perf_counter()
        context.progress.phase(f"loading {ref.name}")
        declared = model_facts(ref).dtype
        dtype = compute_dtype(model_facts(ref))
        tokenizer = load_tokenizer(ref)
        model = load_model(ref, dtype, trainable=False)
        check_model_type(getattr(model.config, "model_type", None), f"model {ref.name!r}")
        shape = Shape.of(model)
        total = shape.param_count()
        target = _check_target(config, total, f"model {ref.name!r}")
        new_shape = solve_shape(shape, target, config.drop_layers, config.drop_kv_groups, config.mlp,
                                config.multiple_of)
        stats = None
        if context.dataset is not None and config.needs_data:
            sequences = calibration_sequences(tokenizer, context.items(config.calibration_split),
                                              config.calibration_samples, config.max_length, config.seed)
            if not sequences:
                raise InvalidInputError("no calibration conversation renders to at least two tokens")
            stats = collect_statistics(model, sequences, context.progress)
        context.progress.phase("pruning")
        plan = choose_plan(model, new_shape, stats, use_activations=config.importance == "activation")
        pruned = apply_plan(model, plan)
        del model
        params = sum(parameter.numel() for parameter in pruned.parameters())
        context.progress.phase(f"saving {context.name}")
        save_model(pruned, tokenizer, context.output_dir, declared if declared in DTYPE_BYTES else dtype)
        removed = sorted(set(range(shape.num_layers)) - set(plan.layers))
        metrics: dict[str, Any] = {
            "source_params": total, "target_params": target, "params": params,
            "removed_fraction": round(1 - params / total, 4),
            "shape_before": shape.describe(), "shape_after": new_shape.describe(),
            "intermediate_size": new_shape.intermediate_size, "num_layers": new_shape.num_layers,
            "num_attention_heads": new_shape.num_heads, "num_key_value_heads": new_shape.num_kv_heads,
            "removed_layers": removed, "wall_time_s": round(time.perf_counter() - started, 2),
        }
        if stats is not None:
            metrics.update({"calibration_sequences": stats.sequences, "calibration_tokens": stats.tokens,
                            "block_influence": [round(value, 5) for value in stats.block_influence()]})
        return Produced(param_count=params, metrics=metrics)


def _check_target(config: PruneConfig, total: int, what: str) -> int:
    target = config.target(total)
    if target > total:
        raise InvalidInputError(f"the target of {target:,} parameters is more than {what} has ({total:,})",
                                hint="pruning only removes parameters: aim below the model's size")
    return target
