"""Shared fixtures: databases (SQLite and PostgreSQL), tiny in-process models, throwaway plugins.

Tests load only supertiny's own built-in plugins (``SUPERTINY_LOAD_PLUGINS=supertiny``), never
whatever third-party plugins happen to be installed.
"""

import os
import uuid
from pathlib import Path

os.environ["SUPERTINY_LOAD_PLUGINS"] = "supertiny"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import sqlalchemy as sa
from supertiny.plugins import load_plugins, pm
from supertiny.store import migrate
from supertiny.store.engine import Store, dispose_engines

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "SUPERTINY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_reason() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}"


_POSTGRES_REASON = _postgres_reason()


def _admin(statement: str) -> None:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(statement))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def blank_database_url(request, tmp_path):
    """A URL of an empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        dispose_engines()
        return
    if _POSTGRES_REASON:
        if os.environ.get("SUPERTINY_REQUIRE_POSTGRES"):
            pytest.fail(_POSTGRES_REASON)
        pytest.skip(_POSTGRES_REASON)
    name = f"supertiny_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    dispose_engines()
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(blank_database_url):
    """A database upgraded to head, on SQLite and on PostgreSQL."""
    migrate.upgrade(blank_database_url)
    return blank_database_url


@pytest.fixture
def store(database_url) -> Store:
    return Store(database_url)


@pytest.fixture
def sqlite_store(tmp_path) -> Store:
    """A store on SQLite only, for tests whose subject is not the database."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    yield Store(url)
    dispose_engines()


@pytest.fixture
def register_plugin():
    """Register throwaway plugin objects for one test; they are unregistered afterwards."""
    load_plugins()
    names = []

    def register(plugin, name: str | None = None):
        name = name or f"test-plugin-{uuid.uuid4().hex[:8]}"
        pm.register(plugin, name=name)
        names.append(name)
        return name

    yield register
    for name in names:
        pm.unregister(name=name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2-architecture causal LM with a tool-rendering chat template (the student)."""
    from supertiny.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-student", seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A second tiny model, larger, with the same tokenizer (the teacher)."""
    from supertiny.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-teacher", seed=1, num_layers=3,
                            hidden_size=96, intermediate_size=192)
