"""Where a benchmark writes its result: ``<out>/<name>-<timestamp>`` as JSON, markdown and PNG."""

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_result_files(out: Path, name: str, result: dict[str, Any], markdown: str,
                       plot: Callable[[Path], None]) -> Path:
    """Write ``result`` (JSON), ``markdown`` and ``plot``'s PNG under one new stem in ``out``; return the stem."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown)
    plot(stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md and .png")
    return stem
