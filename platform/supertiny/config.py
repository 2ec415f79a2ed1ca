"""Settings from the environment, overridable per command (``supertiny --db URL --home DIR``).

``SUPERTINY_HOME``          data dir for models, artifacts and the embedded database
                            (default ``~/.cache/supertiny``)
``SUPERTINY_DATABASE_URL``  SQLAlchemy URL of the store (default: SQLite file in the data dir)
``SUPERTINY_LOAD_PLUGINS``  comma-separated plugin names to load (default: all installed)
``SUPERTINY_ENGINES_DIR``   where engine virtualenvs and logs live (default ``<data dir>/engines``; several
                            data dirs can share one)
``SUPERTINY_ENGINE``        ``off``: never send a stage to an engine, run every model in-process
``SUPERTINY_MODEL_MEMORY``  memory the opened models of one process may take (``8GiB``, ``8000MB``, bytes or
                            ``40%``; default half of system memory); least recently used models not in use
                            are closed past it
"""

import dataclasses
import os
from pathlib import Path

from supertiny.runtime.model_memory import MEMORY_ENV, memory_budget


def _default_home() -> Path:
    return Path(os.environ.get("SUPERTINY_HOME") or Path.home() / ".cache" / "supertiny").expanduser()


@dataclasses.dataclass(frozen=True)
class Settings:
    home: Path = dataclasses.field(default_factory=_default_home)
    database_url: str = ""
    model_memory: str = ""  # the model memory budget as given ("" : SUPERTINY_MODEL_MEMORY, else the default)

    def __post_init__(self) -> None:
        if not self.database_url:
            url = os.environ.get("SUPERTINY_DATABASE_URL") or f"sqlite:///{self.home / 'supertiny.db'}"
            object.__setattr__(self, "database_url", url)
        if not self.model_memory:
            object.__setattr__(self, "model_memory", os.environ.get(MEMORY_ENV, "").strip())

    @property
    def model_memory_bytes(self) -> int:
        """The model memory budget in bytes (ConfigError when ``model_memory`` is not a memory size)."""
        return memory_budget(self.model_memory or None, MEMORY_ENV)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def engines_dir(self) -> Path:
        override = os.environ.get("SUPERTINY_ENGINES_DIR")
        return Path(override).expanduser() if override else self.home / "engines"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def get_settings(database_url: str | None = None, home: str | Path | None = None) -> Settings:
    """Settings from the environment, with explicit arguments taking precedence."""
    resolved_home = Path(home).expanduser() if home else _default_home()
    return Settings(home=resolved_home, database_url=database_url or "")
