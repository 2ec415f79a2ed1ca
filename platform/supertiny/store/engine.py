"""Engines and sessions. One engine per URL per process; URL problems become clear errors."""

import contextlib
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from supertiny.errors import ConfigError, DatabaseError

URL_EXAMPLES = "e.g. sqlite:///path/to/supertiny.db or postgresql+psycopg://user@127.0.0.1:5432/dbname"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def parse_database_url(url: str) -> URL:
    """Parse and normalise a database URL (plain ``postgresql://`` means psycopg 3)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"malformed database URL {url!r}", hint=URL_EXAMPLES) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {parsed.get_backend_name()!r} in URL", hint=URL_EXAMPLES)
    return parsed


def describe_url(url: str | URL) -> str:
    """The URL with any password masked, for messages."""
    try:
        return parse_database_url(str(url)).render_as_string(hide_password=True)
    except ConfigError:
        return str(url)


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``, created on first use."""
    parsed = parse_database_url(url)
    key = parsed.render_as_string(hide_password=False)
    with _lock:
        if key in _engines:
            return _engines[key]
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                from pathlib import Path

                folder = Path(parsed.database).expanduser().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DatabaseError(f"cannot create the SQLite database's folder {folder}: "
                                        f"{exc.strerror or exc}", hint="choose a writable path with --db") from exc
            engine_kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        else:
            engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
        try:
            engine = sa.create_engine(parsed, **engine_kwargs)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigError(
                f"no driver for {parsed.drivername!r}", hint="install supertiny[postgres] for PostgreSQL"
            ) from exc
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _set_sqlite_pragmas)
        _engines[key] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def connection_error(url: str, exc: Exception) -> DatabaseError:
    """A one-line DatabaseError for a driver-level failure to reach the database."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = reason[0] if reason else type(exc).__name__
    return DatabaseError(f"cannot connect to the database at {describe_url(url)}: {first}")


def check_connection(url: str) -> None:
    """Raise DatabaseError unless the database answers a trivial query."""
    engine = get_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        raise connection_error(url, exc) from exc


class Store:
    """The store behind one database URL: hands out sessions that commit on success."""

    def __init__(self, url: str):
        self.url = url
        self.engine = get_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise connection_error(self.url, exc) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
