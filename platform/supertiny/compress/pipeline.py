"""Run a registered compressor end to end and write its result as a new model version.

Every check that can fail on bad input runs before any weight loads: the model (registered, local
weights), the snapshot (known, not empty, of the asked domain) when the compressor takes one, the new
name (free) and the compressor's own checks (architecture, budget). The result lives under
``settings.models_dir/<name>`` and is registered with parent = the input model, dataset = the
calibration snapshot, stage = the compressor's (``pruned``, ``quantized``), the options under the
row config's ``source`` key (provenance, never passed to the backend) and the compressor's metrics.
"""

import dataclasses
import time
from typing import Any

from supertiny.compress.base import CompressContext, Compressor
from supertiny.compress.compress_config import CompressConfig
from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.progress import NullProgress, Progress
from supertiny.store import Store
from supertiny.store.tables import MODEL_STAGES

MAX_NAME = 200


@dataclasses.dataclass
class CompressedModel:
    """The registered result of one compression run."""

    name: str
    model_version_id: int
    path: str
    algorithm: str
    stage: str
    parent: str
    dataset: str | None
    param_count: int
    size_bytes: int
    format: str
    backend: str
    metrics: dict[str, Any]


@dataclasses.dataclass
class PreparedCompression:
    compressor: Compressor
    context: CompressContext


def compress_model(
    store: Store,
    settings: Settings,
    algorithm: str,
    *,
    model: str,
    data: str | None = None,
    config: CompressConfig | None = None,
    name: str | None = None,
    domain: str | None = None,
    progress: Progress | None = None,
) -> CompressedModel:
    """Compress ``model`` with the compressor called ``algorithm`` (calibrating on snapshot ``data`` when
    it takes one); register the result."""
    prepared = prepare_compression(store, settings, algorithm, model=model, data=data, config=config, name=name,
                                   domain=domain, progress=progress)
    return execute_compression(prepared)


def prepare_compression(
    store: Store,
    settings: Settings,
    algorithm: str,
    *,
    model: str,
    data: str | None = None,
    config: CompressConfig | None = None,
    name: str | None = None,
    domain: str | None = None,
    progress: Progress | None = None,
) -> PreparedCompression:
    """Resolve and check everything a run needs; nothing is loaded yet."""
    from supertiny.artifacts.facts import model_ref
    from supertiny.data.snapshot import get_snapshot
    from supertiny.models.versions import find_model_version, get_model_version, require_hf_weights
    from supertiny.registry import lookup

    compressor: Compressor = lookup("compressor", algorithm)
    config = config if config is not None else compressor.config_class()
    if not isinstance(config, compressor.config_class):
        raise InvalidInputError(f"{algorithm} takes a {compressor.config_class.__name__}, "
                                f"not a {type(config).__name__}")
    config.validate()
    if compressor.stage not in MODEL_STAGES:
        raise InvalidInputError(f"compressor {algorithm!r} makes models of stage {compressor.stage!r}, which the "
                                f"registry does not know", hint=f"one of {', '.join(MODEL_STAGES)}")
    source = get_model_version(store, model)
    if source.format == "quantized":
        raise InvalidInputError(f"model {source.name!r} is already quantized", hint="compress its parent instead")
    require_hf_weights(source, "compression")
    ref = model_ref(source)
    dataset = None
    if data:
        if compressor.data == "none":
            raise InvalidInputError(f"{algorithm} takes no --data")
        dataset = get_snapshot(store, data)
        snapshot = f"{dataset.name}@{dataset.version}"
        if dataset.n_items == 0:
            raise InvalidInputError(f"snapshot {snapshot} is empty")
        if domain and dataset.domain != domain:
            raise InvalidInputError(f"snapshot {snapshot} holds {dataset.domain or 'request-log'} records, "
                                    f"not domain {domain!r}")
    elif compressor.data == "required":
        raise InvalidInputError(f"{algorithm} needs --data SNAPSHOT")
    name = name or f"{source.name}-{compressor.name_suffix(config)}"[:MAX_NAME]
    if find_model_version(store, name) is not None:
        raise InvalidInputError(f"a model named {name!r} is already registered",
                                hint="choose another --name (or `supertiny models show` it)")
    context = CompressContext(store=store, settings=settings, config=config, source=source, source_ref=ref,
                              name=name, output_dir=settings.models_dir / name, dataset=dataset,
                              domain=domain or (dataset.domain if dataset else None),
                              progress=progress or NullProgress())
    compressor.check(context)
    return PreparedCompression(compressor=compressor, context=context)


def execute_compression(prepared: PreparedCompression) -> CompressedModel:
    """Compress, then register what the compressor wrote."""
    from supertiny.artifacts import weights
    from supertiny.models.versions import register_model_version

    compressor, context = prepared.compressor, prepared.context
    started = time.perf_counter()
    result = compressor.compress(context)
    metrics = {**result.metrics, "wall_time_s": round(time.perf_counter() - started, 2)}
    dataset = f"{context.dataset.name}@{context.dataset.version}" if context.dataset else None
    provenance = {"algorithm": compressor.name, "parent": context.source.name, "data": dataset,
                  "domain": context.domain, "options": context.config.as_dict()}
    location = result.location or context.output_dir
    size_bytes = location.stat().st_size if location.is_file() else weights.weights_size(context.output_dir)
    row = register_model_version(
        context.store, name=context.name, stage=compressor.stage, format=result.format, backend=result.backend,
        path=str(location), parent=context.source.name,
        dataset_id=context.dataset.id if context.dataset else None, algorithm=compressor.name,
        config={**result.backend_config, "source": provenance}, metrics=metrics, param_count=result.param_count,
        size_bytes=size_bytes)
    return CompressedModel(name=row.name, model_version_id=row.id, path=str(location),
                           algorithm=compressor.name, stage=compressor.stage, parent=context.source.name,
                           dataset=dataset, param_count=result.param_count, size_bytes=size_bytes,
                           format=result.format, backend=result.backend, metrics=metrics)

