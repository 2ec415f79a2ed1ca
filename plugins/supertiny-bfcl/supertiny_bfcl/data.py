"""The BFCL data, read straight out of the bfcl-eval wheel (never installed: its dependencies clash).

The wheel is found, in order, at ``$SUPERTINY_BFCL_WHEEL``, in ``<downloads_dir>/bfcl/``, or
downloaded there with ``pip download --no-deps``. Questions live in
``bfcl_eval/data/BFCL_v4_<category>.json`` and answers in ``bfcl_eval/data/possible_answer/``, both
JSON Lines despite the suffix. Parsed categories are cached in memory per wheel.
"""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from supertiny.config import get_settings
from supertiny.errors import SupertinyError

BFCL_VERSION = "2026.3.23"
WHEEL_ENV = "SUPERTINY_BFCL_WHEEL"
# single-turn Python categories; live_* (user-contributed), java/javascript and multi_turn are left out
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
# categories whose right answer is no call at all: they ship no possible_answer file
NO_CALL_CATEGORIES = frozenset({"irrelevance"})
_DATA_DIR = "bfcl_eval/data/"


class BfclDataError(SupertinyError):
    """The BFCL data cannot be found, fetched or read."""

    http_status = 503


@dataclasses.dataclass(frozen=True)
class BfclEntry:
    """One BFCL question with its function docs (BFCL's own schema dialect) and possible answers."""

    id: str
    category: str
    turns: list[list[dict[str, Any]]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]]


def wheel_dir() -> Path:
    return get_settings().downloads_dir / "bfcl"


def find_wheel(download: bool = True) -> Path:
    """The bfcl-eval wheel to read, downloading it when nothing is configured or cached."""
    configured = os.environ.get(WHEEL_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise BfclDataError(f"{WHEEL_ENV} points at {path}, which is not a file")
        return path
    directory = wheel_dir()
    cached = sorted(directory.glob(f"bfcl_eval-{BFCL_VERSION}-*.whl"))
    if cached:
        return cached[-1]
    if not download:
        raise BfclDataError(f"no bfcl-eval {BFCL_VERSION} wheel in {directory}")
    return download_wheel(directory)


def download_wheel(directory: Path) -> Path:
    """``pip download --no-deps bfcl-eval==<pinned>`` into ``directory``; one clear error when it fails."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--retries", "2", "-d", str(directory),
               f"bfcl-eval=={BFCL_VERSION}"]
    hint = f"put bfcl_eval-{BFCL_VERSION}-py3-none-any.whl in {directory} or set {WHEEL_ENV}"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BfclDataError(f"cannot download bfcl-eval=={BFCL_VERSION}: {exc}", hint=hint) from exc
    wheels = sorted(directory.glob(f"bfcl_eval-{BFCL_VERSION}-*.whl"))
    if result.returncode != 0 or not wheels:
        output = result.stderr or result.stdout or ""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if any("connection" in line.lower() or "retrying" in line.lower() for line in lines):
            why = "PyPI is unreachable"
        else:
            why = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise BfclDataError(f"cannot download bfcl-eval=={BFCL_VERSION} from PyPI: {why}", hint=hint)
    return wheels[-1]


def _member(names: list[str], category: str, answers: bool) -> str | None:
    """The newest ``BFCL_v<N>_<category>.json`` member (questions or possible answers)."""
    folder = re.escape(_DATA_DIR + ("possible_answer/" if answers else ""))
    pattern = re.compile(rf"{folder}BFCL_v(\d+)_{re.escape(category)}\.json")
    found = [(int(match.group(1)), name) for name in names if (match := pattern.fullmatch(name))]
    return max(found)[1] if found else None


def _json_lines(archive: zipfile.ZipFile, member: str) -> list[dict[str, Any]]:
    text = archive.read(member).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@functools.cache
def _read_category(wheel: Path, category: str) -> tuple[BfclEntry, ...]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            question_member = _member(names, category, answers=False)
            if question_member is None:
                raise BfclDataError(f"{wheel.name} has no BFCL questions for category {category!r}")
            questions = _json_lines(archive, question_member)
            answers: dict[str, list[Any]] = {}
            if category not in NO_CALL_CATEGORIES:
                answer_member = _member(names, category, answers=True)
                if answer_member is None:
                    raise BfclDataError(f"{wheel.name} has no BFCL answers for category {category!r}")
                answers = {row["id"]: row["ground_truth"] for row in _json_lines(archive, answer_member)}
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as exc:
        raise BfclDataError(f"cannot read BFCL data from {wheel}: {exc}") from exc
    entries = []
    for row in questions:
        if category not in NO_CALL_CATEGORIES and row["id"] not in answers:
            raise BfclDataError(f"{wheel.name}: question {row['id']!r} has no possible answer")
        entries.append(BfclEntry(id=row["id"], category=category, turns=row["question"],
                                 functions=row["function"], ground_truth=answers.get(row["id"], [])))
    return tuple(entries)


def load_category(category: str, wheel: Path | None = None) -> tuple[BfclEntry, ...]:
    """Every entry of one BFCL category, in BFCL's order."""
    if category not in CATEGORIES:
        raise BfclDataError(f"unknown BFCL category {category!r}", hint=f"known: {', '.join(CATEGORIES)}")
    return _read_category((wheel or find_wheel()).resolve(), category)
