"""What a model's files say without loading them: parameter counts from safetensors headers or GGUF
tensor infos, and the bytes its weights take on disk."""

import json
import math
import struct
from pathlib import Path

from supertiny.errors import InvalidInputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def weight_files(directory: Path) -> list[Path]:
    """The files of an HF directory that hold weights (not the tokenizer, not the config)."""
    files = safetensors_files(directory)
    if files:
        return files
    return sorted(path for path in directory.iterdir()
                  if path.is_file() and path.suffix in (".bin", ".pt", ".pth") and "model" in path.name)


def read_model_config(directory: Path) -> dict:
    """The config.json of an HF directory, or an InvalidInputError saying why there is none to read."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise InvalidInputError(f"{directory} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"unreadable config.json in {directory}: {exc}") from exc


def weights_size(directory: Path) -> int:
    """Bytes on disk of the weight files of an HF directory."""
    return sum(path.stat().st_size for path in weight_files(directory))


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets); reads a few KiB."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise InvalidInputError(f"{path} is not a readable safetensors file: {exc}") from exc
    header.pop("__metadata__", None)
    return header


def count_safetensors_parameters(directory: Path) -> int | None:
    """Parameters stored in the directory's safetensors files (tied weights are stored once), or
    None when the directory has no safetensors files."""
    files = safetensors_files(directory)
    if not files:
        return None
    return sum(math.prod(info["shape"]) for path in files for info in safetensors_header(path).values())


def count_gguf_parameters(path: Path) -> int:
    """Elements of every tensor in a GGUF file (memory-mapped; no weights are decoded)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the gguf package raises plain ValueError/struct errors on bad files
        raise InvalidInputError(f"{path} is not a readable GGUF file: {exc}") from exc
    return sum(int(tensor.n_elements) for tensor in reader.tensors)
