"""The model registry: query functions on ``model_versions``. Callers never open sessions themselves.

Every model the platform knows has one row: a pulled base model, a trained or compressed student
(``parent`` and ``dataset_id`` give its lineage), or an external model: your own HF directory, a
GGUF file, or an OpenAI-compatible endpoint.

A row's ``config`` holds the options its backend opens it with (``lookup("backend", row.backend)
.open(row.path, backend_options(row.config))``), plus one reserved key, ``"source"``: provenance
(packages, checksums, the algorithm's settings ...) that is never passed to the backend.
"""

import difflib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.store.engine import Store
from supertiny.store.tables import MODEL_STAGES, ModelVersion

MAX_LINEAGE = 1000  # a guard against a cycle written by hand into the table


PROVENANCE_KEY = "source"


def backend_options(config: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a row's config that its backend takes (everything but the provenance)."""
    return {key: value for key, value in (config or {}).items() if key != PROVENANCE_KEY}


def register_model_version(
    store: Store,
    *,
    name: str,
    stage: str,
    format: str,
    backend: str,
    path: str | Path,
    parent: str | int | None = None,
    dataset_id: int | None = None,
    algorithm: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    param_count: int | None = None,
    size_bytes: int | None = None,
    status: str = "ready",
    replace: bool = False,
) -> ModelVersion:
    """Add a model version; ``parent`` is the name or id of the model it was made from.

    A name can be registered once; ``replace=True`` overwrites the row of that name in place (its
    id, and so its children's lineage, stays)."""
    name = _check_name(name)
    if stage not in MODEL_STAGES:
        raise InvalidInputError(f"unknown model stage {stage!r}", hint=f"one of {', '.join(MODEL_STAGES)}")
    fields = {
        "stage": stage, "format": format, "backend": backend, "path": str(path), "dataset_id": dataset_id,
        "algorithm": algorithm, "config": dict(config or {}), "metrics": dict(metrics or {}),
        "param_count": param_count, "size_bytes": size_bytes, "status": status,
    }
    try:
        with store.session() as session:
            fields["parent_id"] = _parent_id(session, parent)
            row = session.scalar(sa.select(ModelVersion).where(ModelVersion.name == name))
            if row is None:
                row = ModelVersion(name=name, **fields)
                session.add(row)
            elif not replace:
                raise InvalidInputError(f"a model named {name!r} is already registered",
                                        hint="choose another name")
            else:
                if fields["parent_id"] == row.id:
                    raise InvalidInputError(f"model {name!r} cannot be its own parent")
                for key, value in fields.items():
                    setattr(row, key, value)
            session.flush()
    except IntegrityError as exc:  # a concurrent registration of the same name won the race
        raise InvalidInputError(f"a model named {name!r} is already registered",
                                hint="choose another name") from exc
    return row


def require_hf_weights(version: ModelVersion, purpose: str) -> None:
    """InvalidInputError unless ``version``'s backend opens it from weights transformers loads (training and
    compression read those)."""
    from supertiny.registry import lookup

    if version.format not in ("hf", "gguf") or not getattr(lookup("backend", version.backend), "hf_weights", False):
        raise InvalidInputError(f"model {version.name!r} is a {version.format} model served by {version.backend}: "
                                f"{purpose} needs its weights as a local Hugging Face directory")


def find_model_version(store: Store, name: str) -> ModelVersion | None:
    """The model version called ``name``, or None."""
    with store.session() as session:
        return session.scalar(sa.select(ModelVersion).where(ModelVersion.name == name))


def get_model_version(store: Store, name: str) -> ModelVersion:
    """The model version called ``name``, or a NotFoundError naming the closest registered one."""
    row = find_model_version(store, name)
    if row is not None:
        return row
    with store.session() as session:
        known = list(session.scalars(sa.select(ModelVersion.name)))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif known:
        hint = "`supertiny models list` shows the registered models"
    else:
        hint = "no model is registered yet: `supertiny models pull --all` or `supertiny models register PATH`"
    raise NotFoundError(f"unknown model {name!r}", hint=hint)


def list_model_versions(store: Store, stage: str | None = None) -> list[ModelVersion]:
    """Every model version (optionally of one stage), oldest first."""
    query = sa.select(ModelVersion).order_by(ModelVersion.id)
    if stage is not None:
        query = query.where(ModelVersion.stage == stage)
    with store.session() as session:
        return list(session.scalars(query))


def lineage(store: Store, name: str) -> list[ModelVersion]:
    """The model, its parent, its parent's parent ... back to its root (each row has its dataset_id)."""
    chain = [get_model_version(store, name)]
    seen = {chain[0].id}
    with store.session() as session:
        while chain[-1].parent_id is not None and len(chain) < MAX_LINEAGE:
            parent = session.get(ModelVersion, chain[-1].parent_id)
            if parent is None or parent.id in seen:
                break
            seen.add(parent.id)
            chain.append(parent)
    return chain


def model_version_summary(row: ModelVersion, parent_name: str | None = None) -> dict[str, Any]:
    """A row as plain data, for tables and JSON."""
    return {
        "id": row.id, "name": row.name, "stage": row.stage, "parent": parent_name,
        "dataset_id": row.dataset_id,
        "params": row.param_count, "size": row.size_bytes, "format": row.format, "backend": row.backend,
        "path": row.path, "algorithm": row.algorithm, "status": row.status, "created": row.created_at,
        "config": row.config, "metrics": row.metrics,
    }


def summarize_model_versions(store: Store, stage: str | None = None) -> list[dict[str, Any]]:
    """Every model version as plain data, with its parent's name resolved."""
    rows = list_model_versions(store, stage)
    with store.session() as session:
        query = sa.select(ModelVersion.id, ModelVersion.name)
        names = {model_id: model_name for model_id, model_name in session.execute(query)}
    return [model_version_summary(row, names.get(row.parent_id)) for row in rows]


def register_external(
    store: Store,
    location: str | Path,
    name: str | None = None,
    *,
    served_model: str | None = None,
    api_key_env: str | None = None,
    parent: str | int | None = None,
    replace: bool = False,
) -> ModelVersion:
    """Register a model supertiny did not make: an HF directory, a ``.gguf`` file, or the base URL of
    an OpenAI-compatible endpoint (``served_model`` is the name the endpoint serves it under)."""
    from supertiny.artifacts import weights

    text = str(location)
    if urlparse(text).scheme in ("http", "https"):
        return _register_endpoint(store, text, name, served_model, api_key_env, parent, replace)
    if urlparse(text).scheme not in ("", "file") and "://" in text:
        raise InvalidInputError(f"unsupported URL {text!r}", hint="give an http:// or https:// endpoint")
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise InvalidInputError(f"no such file or directory: {text}",
                                hint="give an HF model directory, a .gguf file or an http(s):// endpoint URL")
    common = {"stage": "external", "parent": parent, "replace": replace}
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidInputError(f"{text} is neither a model directory nor a .gguf file")
        return register_model_version(
            store, name=name or path.stem, format="gguf", backend="transformers", path=str(path.parent),
            config={"gguf_file": str(path)}, param_count=weights.count_gguf_parameters(path),
            size_bytes=path.stat().st_size, **common,
        )
    model_config = weights.read_model_config(path)
    if not weights.weight_files(path):
        raise InvalidInputError(f"no weights in {path}", hint="expected *.safetensors or pytorch_model*.bin")
    return register_model_version(
        store, name=name or path.name, format="hf", backend="transformers", path=str(path),
        config={"source": {"kind": "hf", "model_type": model_config.get("model_type")}},
        param_count=weights.count_safetensors_parameters(path), size_bytes=weights.weights_size(path),
        **common,
    )


def _register_endpoint(store: Store, url: str, name: str | None, served_model: str | None,
                       api_key_env: str | None, parent: str | int | None, replace: bool) -> ModelVersion:
    if not urlparse(url).netloc:
        raise InvalidInputError(f"malformed endpoint URL {url!r}", hint="e.g. http://127.0.0.1:8000/v1")
    if not served_model:
        raise InvalidInputError(f"which model does {url} serve?",
                                hint="pass --model SERVED_NAME (the `model` field of its requests)")
    config = {"model": served_model}
    if api_key_env:
        config["api_key_env"] = api_key_env
    return register_model_version(store, name=name or served_model, stage="external", format="openai",
                                  backend="openai", path=url.rstrip("/"), config=config, parent=parent,
                                  replace=replace)


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200 or any(char.isspace() for char in name):
        raise InvalidInputError(f"invalid model name {name!r}",
                                hint="1 to 200 characters, no spaces (e.g. qwen-0.5b-sft-v2)")
    return name


def _parent_id(session: Any, parent: str | int | None) -> int | None:
    if parent is None:
        return None
    query = sa.select(ModelVersion.id).where(
        ModelVersion.id == parent if isinstance(parent, int) else ModelVersion.name == parent)
    parent_id = session.scalar(query)
    if parent_id is None:
        raise NotFoundError(f"unknown parent model {parent!r}")
    return parent_id
