"""Schema migrations with Alembic, driven from code: ``upgrade``, ``current``, ``check``."""

import dataclasses
import os
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.exc import OperationalError

from supertiny.errors import MigrationError
from supertiny.store.base import Base
from supertiny.store.engine import connection_error, describe_url, get_engine


def migrations_dir() -> Path:
    """The Alembic script directory: ``SUPERTINY_MIGRATIONS_DIR`` or ``migrations/`` of the checkout."""
    override = os.environ.get("SUPERTINY_MIGRATIONS_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "migrations"
    if not (path / "env.py").is_file():
        raise MigrationError(
            f"no Alembic migrations at {path}", hint="set SUPERTINY_MIGRATIONS_DIR to the migrations/ folder"
        )
    return path


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _unknown_revision(url: str, exc: CommandError) -> MigrationError:
    return MigrationError(
        f"the database at {describe_url(url)} is at a revision the migrations do not contain: {exc}",
        hint="upgrade supertiny, or point --db at a database this version created",
    )


def upgrade(url: str, revision: str = "head") -> str | None:
    """Bring the database to ``revision`` (default: head); returns the revision it is at."""
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise _unknown_revision(url, exc) from exc
    except OperationalError as exc:
        raise connection_error(url, exc) from exc
    return current_revision(url)


def current_revision(url: str) -> str | None:
    """The revision the database is stamped with, or None for a blank database."""
    try:
        with get_engine(url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise connection_error(url, exc) from exc


@dataclasses.dataclass
class SchemaReport:
    current: str | None
    head: str | None
    differences: list[str]

    @property
    def ok(self) -> bool:
        return self.current == self.head and not self.differences


def check(url: str) -> SchemaReport:
    """Compare the database with the migrations' head and with the ORM models."""
    head = head_revision()
    current = current_revision(url)
    if current is not None and current != head:
        script = ScriptDirectory.from_config(alembic_config(url))
        try:
            script.get_revision(current)
        except CommandError as exc:
            raise _unknown_revision(url, exc) from exc
    try:
        with get_engine(url).connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = [_describe_difference(diff) for diff in compare_metadata(context, Base.metadata)]
    except OperationalError as exc:
        raise connection_error(url, exc) from exc
    return SchemaReport(current=current, head=head, differences=differences)


def _describe_difference(diff) -> str:
    if isinstance(diff, list):  # column modifications come grouped
        return "; ".join(_describe_difference(item) for item in diff)
    kind, *rest = diff
    names = [getattr(item, "name", None) or str(item) for item in rest if item is not None]
    return f"{kind}: {' '.join(str(name) for name in names[:3])}"
