"""Write a real (tiny) GGUF file from an HF Qwen2 directory with the product exporter: F32 tensors and the
output head quantized to Q8_0, like the real Qwen files. Tests pull, convert and register it offline."""

from pathlib import Path

from supertiny.compress.gguf_export import export_gguf


def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """Convert the tiny Qwen2 model in ``model_dir`` to a GGUF file at ``path``."""
    return export_gguf(model_dir, path, "f32", head_type="q8_0", name="tiny-qwen2").path
