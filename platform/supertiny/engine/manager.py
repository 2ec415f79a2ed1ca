"""Engines as managed processes: start one for a registered model version, find the one serving a model,
stop it, read its log; or run a transient one for a model directory while a job needs it (rft's rounds).
``supertiny engine`` calls these; :func:`engine_location` is how every stage (harvest, eval, rft sampling,
serve, bench) finds that a model has an engine and opens it there.

What an engine can serve: a Hugging Face directory (``hf`` format on the ``transformers`` backend): base
models, trained students, pruned and healed models; and W8A8 int8 checkpoints from ``compress quantize --scheme
w8a8`` (``compressed-tensors`` format). Not: weight-only int8/int4 from ``compress quantize`` (torch CPU kernels
vLLM does not load), GGUF files (served in-process by llama.cpp or transformers), or
models that already are an endpoint. Those keep their own backend and are refused here with one line.
"""

import contextlib
import dataclasses
import datetime as dt
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from supertiny.config import Settings
from supertiny.engine import launch, records
from supertiny.engine.environment import ensure_environment
from supertiny.engine.launch import EngineOptions
from supertiny.errors import EngineUnavailableError, InvalidInputError, NotFoundError
from supertiny.store import InferenceEngine, ModelVersion, Store

ENGINE_ENV = "SUPERTINY_ENGINE"  # "off": never route a stage to an engine (in-process backends only)


@dataclasses.dataclass
class EngineStatus:
    """One engine as ``engine status`` shows it."""

    engine: InferenceEngine
    model: str
    healthy: bool

    def summary(self) -> dict[str, Any]:
        row = self.engine
        return {"id": row.id, "model": self.model, "status": row.status, "healthy": self.healthy, "url": row.url,
                "kind": row.kind, "host": row.host, "pid": row.pid, "started_at": row.started_at,
                "stopped_at": row.stopped_at, "log": row.log_path, "error": row.error}


def engines_enabled() -> bool:
    return os.environ.get(ENGINE_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def servable_reason(version: ModelVersion) -> str | None:
    """Why an engine cannot serve this model version, or None."""
    from supertiny.registry import lookup

    if version.format == "openai":
        return f"{version.name} is already an endpoint ({version.path})"
    if version.format == "gguf":
        return (f"{version.name} is a GGUF file; vLLM's CPU build does not run GGUF weights, so it is served "
                "in-process (llama.cpp or transformers backend)")
    # a compressed-tensors checkpoint names its quantization in its config, which vLLM reads
    loadable = version.format == "compressed-tensors" or (
        version.format == "hf" and getattr(lookup("backend", version.backend), "hf_weights", False))
    if not loadable:
        return (f"{version.name} is a {version.format} model of the {version.backend} backend (weights vLLM "
                "cannot load); it is served in-process. Serve its unquantized parent on an engine instead")
    if not (Path(version.path) / "config.json").is_file():
        return f"{version.name} has no Hugging Face directory at {version.path}"
    return None


def start_engine(store: Store, settings: Settings, model: str, options: EngineOptions | None = None,
                 say: Callable[[str], None] = lambda _: None) -> InferenceEngine:
    """Start (or find already running) the engine of a registered model; returns its record once healthy."""
    from supertiny.models.versions import get_model_version

    options = options or EngineOptions()
    version = get_model_version(store, model)
    reason = servable_reason(version)
    if reason:
        raise InvalidInputError(f"no engine can serve {reason}")
    for row in records.live_engines(store, version.id):
        if row.status == "running" and launch.healthy(row.url):
            say(f"{version.name} is already served by the engine at {row.url} (pid {row.pid})")
            return row
        if row.host == records.this_host() and not launch.is_engine_process(row.pid):
            records.set_status(store, row.id, "failed", error="the process was gone")
    environment = ensure_environment(settings, say=say)
    port = launch.choose_port(options.host, options.port)
    wildcard = options.host in ("0.0.0.0", "::")
    local_url = f"http://{'127.0.0.1' if wildcard else options.host}:{port}/v1"
    url = f"http://{options.advertise_host or (records.this_host() if wildcard else options.host)}:{port}/v1"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = settings.engines_dir / "logs" / f"{_file_name(version.name)}-{stamp}-{port}.log"
    command = launch.server_command(environment, version.path, version.name, port, options)
    pid = launch.spawn(command, launch.server_env(environment, options), log_path)
    row = records.record_engine(store, version, kind=environment.label, url=url, served_model=version.name, pid=pid,
                                log_path=str(log_path), config={**options.as_dict(), "port": port})
    say(f"starting {environment.label} for {version.name} on {url} (pid {pid}, log {log_path})")
    try:
        launch.wait_healthy(local_url, pid, log_path, options.startup_timeout_s)
    except EngineUnavailableError as exc:
        records.set_status(store, row.id, "failed", error=str(exc))
        raise EngineUnavailableError(f"the engine for {version.name} did not start: {exc.message}",
                                     hint=exc.hint) from None
    except BaseException:  # interrupted: leave nothing running behind a "starting" record
        launch.terminate(pid)
        records.set_status(store, row.id, "failed", error="start-up was interrupted")
        raise
    return records.set_status(store, row.id, "running")


@contextlib.contextmanager
def transient_engine(settings: Settings, model_dir: str | Path, name: str, options: EngineOptions | None = None,
                     say: Callable[[str], None] = lambda _: None) -> Iterator[tuple[str, dict[str, Any]]]:
    """An engine for a model directory that is not (yet) a registered version, such as a training round's
    model, for the length of the ``with`` block: yields (URL, ``vllm`` backend config); stopped on exit,
    errors and interruptions included. It leaves no record in the store."""
    options = options or EngineOptions()
    model_dir = str(Path(model_dir).resolve())
    environment = ensure_environment(settings, say=say)
    port = launch.choose_port(options.host, options.port)
    url = f"http://{options.host}:{port}/v1"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = settings.engines_dir / "logs" / f"{_file_name(name)}-{stamp}-{port}.log"
    command = launch.server_command(environment, model_dir, name, port, options)
    pid = launch.spawn(command, launch.server_env(environment, options), log_path)
    say(f"starting {environment.label} for {name} on {url} (pid {pid}, log {log_path})")
    try:
        try:
            launch.wait_healthy(url, pid, log_path, options.startup_timeout_s)
        except EngineUnavailableError as exc:
            raise EngineUnavailableError(f"the engine for {name} did not start: {exc.message}",
                                         hint=exc.hint) from None
        yield url, {"model": name, "tokenizer": model_dir, "name": name}
    finally:
        launch.terminate(pid)


def stop_engine(store: Store, model: str) -> list[InferenceEngine]:
    """Stop this host's live engines of a model; NotFoundError if it has none."""
    from supertiny.models.versions import get_model_version

    version = get_model_version(store, model)
    rows = records.live_engines(store, version.id)
    mine = [row for row in rows if row.host == records.this_host()]
    if not mine:
        elsewhere = sorted({row.host for row in rows})
        hint = f"its engines run on {', '.join(elsewhere)}: stop them there" if elsewhere else \
            "`supertiny engine status` lists the running engines"
        raise NotFoundError(f"no engine of {version.name} runs on this host", hint=hint)
    stopped = []
    for row in mine:
        was_running = launch.is_engine_process(row.pid) and launch.terminate(row.pid)
        stopped.append(records.set_status(store, row.id, "stopped",
                                          error=None if was_running else "the process had already exited"))
    return stopped


def engine_statuses(store: Store, include_ended: bool = False) -> list[EngineStatus]:
    """Every live engine (or every engine), with a live health check of the running ones."""
    statuses = []
    for row, name in records.list_engines(store, include_ended):
        is_live = row.status in records.LIVE_STATUSES
        statuses.append(EngineStatus(row, name, healthy=is_live and launch.healthy(row.url)))
    return statuses


def engine_log(store: Store, model: str, lines: int = 50) -> tuple[InferenceEngine, list[str]]:
    """The newest engine of a model and the last ``lines`` lines of its log."""
    from supertiny.models.versions import get_model_version

    version = get_model_version(store, model)
    row = records.latest_engine(store, version.id)
    if row is None:
        raise NotFoundError(f"no engine was ever started for {version.name}",
                            hint=f"supertiny engine start {version.name}")
    return row, launch.tail(Path(row.log_path), lines)


def engine_location(store: Store, version: ModelVersion) -> tuple[str, dict[str, Any]] | None:
    """(engine URL, ``vllm`` backend config) of a healthy running engine of ``version``; None when it has
    no running engine. An engine recorded as running that does not answer is an outage, not a choice to run
    in-process: EngineUnavailableError."""
    if not engines_enabled() or servable_reason(version) is not None:
        return None
    rows = records.running_engines(store, version.id)
    for row in rows:
        if launch.healthy(row.url):
            return row.url, {"model": row.served_model, "tokenizer": version.path, "name": version.name}
    if rows:
        raise EngineUnavailableError(
            f"the engine serving {version.name} at {rows[0].url} is not answering",
            hint=f"`supertiny engine start {version.name}` restarts it; `supertiny engine stop {version.name}` "
                 "runs the model in-process instead")
    return None


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]
