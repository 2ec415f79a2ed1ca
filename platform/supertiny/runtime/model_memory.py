"""How much memory opened models may take, and how much one takes.

``parse_memory_size("8GiB")`` reads a budget (bytes, ``KB``/``MB``/``GB``/``TB`` in powers of 1000,
``K``/``M``/``G``/``T`` and ``KiB``/``MiB``/``GiB``/``TiB`` in powers of 1024, or ``N%`` of system memory);
``memory_budget()`` is the budget this process gets (``SUPERTINY_MODEL_MEMORY``, else half of system memory).
``model_bytes(model)`` estimates a model's resident size from its facts: the bytes of its in-process weights,
nothing for a model behind an engine or an HTTP endpoint; ``location_bytes`` estimates the same before opening,
from the weight files on disk. ``return_freed_memory()`` hands the memory of closed models back to the system.
"""

import ctypes
import ctypes.util
import functools
import gc
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supertiny.errors import ConfigError

if TYPE_CHECKING:  # a type only: settings read budgets without importing the model layer
    from supertiny.models.backend import ChatModel

MEMORY_ENV = "SUPERTINY_MODEL_MEMORY"
DEFAULT_SHARE = 0.5  # of system memory, without SUPERTINY_MODEL_MEMORY or --model-memory

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*|%)\s*$", re.IGNORECASE)
_WEIGHT_SUFFIXES = ((".safetensors",), (".bin", ".pt", ".pth"), (".gguf",))  # one format counts, in this order
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "int8": 1}
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def parse_memory_size(text: str | int, what: str = MEMORY_ENV) -> int:
    """Bytes for ``text``: a number of bytes, a size with a unit (``8GiB``, ``8000MB``, ``1.5G``) or a share of
    system memory (``40%``). Anything else is one ConfigError naming ``what``."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise _invalid(what, str(text))
        return text
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or (unit != "%" and unit not in _UNITS):
        raise _invalid(what, str(text))
    number = float(match.group(1))
    if unit == "%":
        if number > 100:
            raise _invalid(what, str(text))
        return int(system_memory_bytes() * number / 100)
    return int(number * _UNITS[unit])


def _invalid(what: str, text: str) -> ConfigError:
    return ConfigError(f"{what}: {text!r} is not a memory size",
                       hint="give bytes (8000000000), a size with a unit (8GiB, 8000MB, 512M) or a share of "
                            "system memory (50%)")


def system_memory_bytes() -> int:
    """Physical memory of this machine, or the container's memory limit where that is lower."""
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        try:
            import psutil

            total = int(psutil.virtual_memory().total)
        except ImportError:
            total = 0
    for path in _CGROUP_LIMITS:
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and 0 < int(limit) < (total or int(limit) + 1):
            total = int(limit)
    return total


def memory_budget(value: str | int | None = None, what: str = "--model-memory") -> int:
    """The model memory budget in bytes: ``value`` when given (errors name it ``what``), else
    ``SUPERTINY_MODEL_MEMORY``, else half of system memory."""
    if value is not None and value != "":
        return parse_memory_size(value, what)
    configured = os.environ.get(MEMORY_ENV, "").strip()
    if configured:
        return parse_memory_size(configured, MEMORY_ENV)
    return int(system_memory_bytes() * DEFAULT_SHARE)


def format_bytes(size: int) -> str:
    """``size`` for a human: ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def model_bytes(model: "ChatModel") -> int | None:
    """The memory ``model`` holds in this process: 0 for a model served elsewhere (an engine, an HTTP
    endpoint), its weights' bytes when they are here, None when it says nothing either way.

    A model may state its own size as ``resident_bytes`` (an int or a method returning one)."""
    stated = getattr(model, "resident_bytes", None)
    if stated is not None:
        return int(stated() if callable(stated) else stated)
    if not model.capabilities.local:
        return 0
    module = getattr(model, "model", None)
    if module is not None and hasattr(module, "parameters"):
        return _module_bytes(module)
    path = getattr(getattr(model, "llama", None), "model_path", None)  # a llama.cpp model maps its GGUF file
    if path and Path(path).is_file():
        return Path(path).stat().st_size
    return None


def _module_bytes(module: Any) -> int:
    """Bytes of a torch module's parameters and buffers, each tensor storage counted once (tied weights)."""
    seen: set[int] = set()
    total = 0
    tensors = [*module.parameters(), *(module.buffers() if hasattr(module, "buffers") else [])]
    for tensor in tensors:
        pointer = tensor.data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        total += tensor.numel() * tensor.element_size()
    return total


def location_bytes(location: str, config: dict[str, Any]) -> int:
    """An estimate, before opening, of the memory a model at ``location`` will hold: the size of its weight
    files (scaled to the ``dtype`` asked for when the stored one is known); 0 for a URL or anything not on
    this machine's disk."""
    gguf = config.get("gguf_file")
    path = Path(str(gguf)) if gguf and Path(str(gguf)).is_absolute() else Path(location).expanduser()
    if gguf and not path.is_file():
        path = Path(location).expanduser() / str(gguf)
    try:
        if path.is_file():
            return path.stat().st_size
        if not path.is_dir():
            return 0
        for suffixes in _WEIGHT_SUFFIXES:
            files = [item for item in path.iterdir() if item.is_file() and item.suffix.lower() in suffixes]
            if files:
                size = sum(item.stat().st_size for item in files) if suffixes[0] != ".gguf" \
                    else max(item.stat().st_size for item in files)
                return int(size * _dtype_ratio(path, config))
    except OSError:
        return 0
    return 0


def _dtype_ratio(directory: Path, config: dict[str, Any]) -> float:
    """How much larger than on disk the weights get in the dtype ``config`` asks for (1 when unknown)."""
    wanted = _DTYPE_BYTES.get(str(config.get("dtype", "")).removeprefix("torch."))
    if wanted is None:
        return 1.0
    try:
        stored_config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return 1.0
    stored = _DTYPE_BYTES.get(str(stored_config.get("torch_dtype") or stored_config.get("dtype") or ""))
    return wanted / stored if stored else 1.0


def return_freed_memory() -> None:
    """Collect garbage and return the freed heap to the system. glibc keeps what a closed model freed in its
    arenas: after a LoRA fine-tune of the 0.5B the process still holds gigabytes it no longer uses, which
    other processes (an engine) cannot have until it is trimmed."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None on a C library without it (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
