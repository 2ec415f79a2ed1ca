"""The demo's engines: a vLLM engine for each model a step sends enough requests to, started when that step
first needs it (the engine's virtualenv is built then, once, and its time counts in that step) and stopped
when the demo ends. Where vLLM cannot be installed or run, the demo says why in one line and runs every
model in-process; where it runs but one model's engine fails to start (a quantization this CPU's build has no
kernel for), that model runs in-process."""

import time
from collections.abc import Callable
from typing import Any

from supertiny.config import Settings
from supertiny.errors import EngineUnavailableError, InvalidInputError
from supertiny.store.engine import Store

LLM_KV_CACHE_GIB = 4  # about 150,000 tokens of the 1.5B teacher


class DemoEngines:
    """Engines this demo run started, by model name."""

    def __init__(self, settings: Settings, store: Store, mode: str, echo: Callable[[str], None],
                 llm: str | None = None):
        self.settings = settings
        self.llm = llm
        self.store = store
        self.echo = echo
        self.unavailable: str | None = "engine off (--engine off)" if mode == "off" else None
        self.started: dict[str, Any] = {}
        self.engine_ran = False  # an engine served in this run: a later failure to start is the model's

    def use(self, model: str) -> dict[str, Any]:
        """Serve ``model`` on an engine if one can run it; what serves it and how long getting there took."""
        from supertiny.engine.launch import EngineOptions
        from supertiny.engine.manager import engine_location, start_engine
        from supertiny.models.versions import get_model_version

        version = get_model_version(self.store, model)
        if self.unavailable:
            return {"served_by": "in-process", "why": self.unavailable, "engine_s": 0.0}
        found = engine_location(self.store, version)
        if found is not None:
            self.engine_ran = True
            return {"served_by": f"vllm engine at {found[0]}", "engine_s": 0.0}
        started = time.perf_counter()
        try:
            # eager: torch.compile adds a minute or more to each start on a small CPU for a modest gain in
            # throughput, which a demo-sized job does not earn back. The LLM's cache holds every prompt of a
            # 100-task evaluation, so the guided evaluation after the free one (the same prompts but for the
            # instruction that ends them) reads most of its prefill from it
            kv_cache_gib = LLM_KV_CACHE_GIB if model == self.llm else EngineOptions.kv_cache_gib
            options = EngineOptions(eager=True, kv_cache_gib=kv_cache_gib)
            row = start_engine(self.store, self.settings, model, options, say=lambda line: self.echo(f"      {line}"))
        except InvalidInputError as exc:  # a format no engine serves: this model stays in-process
            return {"served_by": "in-process", "why": exc.message, "engine_s": 0.0}
        except EngineUnavailableError as exc:
            if self.engine_ran:
                self.echo(f"      {exc.message}; {model} runs in-process")
                return {"served_by": "in-process", "why": exc.message, "engine_s": time.perf_counter() - started}
            self.unavailable = exc.message
            self.echo(f"      no engine: {exc.message}; every model runs in-process")
            return {"served_by": "in-process", "why": exc.message, "engine_s": time.perf_counter() - started}
        self.started[model] = row
        self.engine_ran = True
        return {"served_by": f"{row.kind} engine at {row.url}", "engine_s": time.perf_counter() - started}

    def stop_all(self, keep: str | None = None) -> None:
        """Stop every engine this run started, except ``keep``'s."""
        from supertiny.engine.manager import stop_engine

        for model in [model for model in self.started if model != keep]:
            try:
                stop_engine(self.store, model)
            except Exception as exc:  # the demo's result stands; say what was left running
                self.echo(f"      could not stop the engine of {model}: {exc}")
            self.started.pop(model, None)
