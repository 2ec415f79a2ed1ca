"""The demo's memory between runs: which steps finished, what they made and how long they took.

One JSON file per demo prefix (``<home>/demo/<prefix>/state.json``), rewritten atomically after every
step, so Ctrl-C or a crash loses at most the step in flight, and that step's own machinery (the harvest's
fingerprinted runs, the trainers' checkpoints) resumes it.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError


class DemoState:
    """Finished steps by name: ``{"key": str, "result": {...}, "wall_s": float, "finished_at": str}``. A step
    counts as done while its recorded key is the one the current plan gives it (``keys``)."""

    def __init__(self, path: Path, keys: dict[str, str]):
        self.path = path
        self.keys = keys
        self.steps: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"the demo state {path} is unreadable ({exc})",
                                        hint="delete it to start the demo's bookkeeping afresh; the store keeps "
                                             "every harvested sample and model, and the steps reuse them") from exc
            self.steps = {name: step for name, step in dict(data.get("steps", {})).items()
                          if isinstance(step, dict) and "key" in step and "result" in step}

    @property
    def directory(self) -> Path:
        return self.path.parent

    def done(self, step: str) -> bool:
        return step in self.steps and self.steps[step]["key"] == self.keys.get(step)

    def current(self) -> dict[str, dict[str, Any]]:
        """The steps done for the current plan, in the order they finished."""
        return {name: step for name, step in self.steps.items() if self.done(name)}

    def result(self, step: str) -> dict[str, Any]:
        return self.steps[step]["result"]

    def record(self, step: str, result: dict[str, Any], wall_s: float) -> None:
        self.steps.pop(step, None)  # re-recorded at the end: the file lists steps in the order they finished
        self.steps[step] = {"key": self.keys.get(step), "result": result, "wall_s": round(wall_s, 2),
                            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"steps": self.steps}, indent=2, default=str))
        os.replace(temporary, self.path)
