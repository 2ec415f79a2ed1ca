"""What the engine benchmarks share: a scratch store, the same model registered once per engine, and the
vLLM engine started for a run and stopped after it.

Engines: ``in-process`` (transformers, one request at a time), ``batched`` (transformers with dynamic
batching), ``vllm`` (the model's vLLM engine, ``supertiny engine start``).
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENGINES = {
    "in-process": "transformers in-process, one request at a time",
    "batched": "transformers in-process, dynamic batching",
    "vllm": "vLLM engine (supertiny engine start)",
}


def parse_engines(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(ENGINES))
    if unknown:
        raise SystemExit(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    return kinds


DECODINGS = ("free", "guided")


def parse_decodings(text: str) -> list[str]:
    """``--decoding``: free and/or guided (the engine decodes under the tools' JSON Schemas)."""
    decodings = [value.strip() for value in text.split(",") if value.strip()]
    if not decodings or set(decodings) - set(DECODINGS):
        raise SystemExit(f"--decoding takes {' and/or '.join(DECODINGS)}, not {text!r}")
    return decodings


def scratch(db: str | None = None) -> tuple[Any, Any]:
    """(settings, store) of a scratch data dir: the benchmark's traffic never lands in the user's store, while
    engines reuse the user's engine virtualenv."""
    from supertiny.config import Settings, get_settings
    from supertiny.store.session import open_store

    os.environ.setdefault("SUPERTINY_ENGINES_DIR", str(get_settings().engines_dir))
    workdir = Path(tempfile.mkdtemp(prefix="supertiny-bench-"))
    settings = Settings(home=workdir, database_url=db or f"sqlite:///{workdir / 'bench.db'}")
    return settings, open_store(settings)


def model_dir(name_or_path: str) -> str:
    """The HF directory of a registered model (in the user's store) or a directory given as is."""
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path).resolve())
    from supertiny.config import get_settings
    from supertiny.models.versions import get_model_version
    from supertiny.store.session import open_store

    return get_model_version(open_store(get_settings()), name_or_path).path


@contextlib.contextmanager
def engine_model(kind: str, store: Any, settings: Any, directory: str, label: str = "bench") -> Iterator[str]:
    """Register ``directory`` in the scratch store as this engine's model (starting its vLLM engine for
    ``vllm``); yields the registered name, and stops the engine and closes the model after."""
    from supertiny.artifacts.weights import weights_size
    from supertiny.models.versions import register_external, register_model_version
    from supertiny.runtime.loading import close_models

    name = f"{label}-{kind}"
    if kind == "vllm":
        from supertiny.engine.launch import EngineOptions
        from supertiny.engine.manager import start_engine, stop_engine

        register_external(store, directory, name=name)
        start_engine(store, settings, name, EngineOptions(), say=lambda line: print(line, flush=True))
    else:
        register_model_version(store, name=name, stage="external", format="hf", backend="transformers",
                               path=directory, config={"dynamic_batching": kind == "batched"},
                               size_bytes=weights_size(Path(directory)))
    try:
        yield name
    finally:
        close_models()
        if kind == "vllm":
            stop_engine(store, name)


def machine() -> str:
    import torch

    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        flags = "AVX512-BF16" if "avx512_bf16" in text else "AVX2" if "avx2" in text else ""
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                     "")
        flags = f"{model}, {flags}" if model else flags
    return f"{os.cpu_count()} CPUs ({flags}), torch {torch.__version__} ({torch.get_num_threads()} threads)"
