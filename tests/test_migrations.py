"""Migrations: a blank database upgrades to head, matches the models, and bad states are reported."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from supertiny.errors import MigrationError
from supertiny.store import Base, get_engine, migrate

EXPECTED_TABLES = {
    "tasks", "harvest_runs", "samples", "datasets", "dataset_items", "model_versions", "evaluations",
    "routing_policies", "request_logs", "api_keys", "engines",
}


def test_blank_database_upgrades_to_head_with_no_autogenerate_difference(blank_database_url):
    assert migrate.current_revision(blank_database_url) is None
    assert migrate.upgrade(blank_database_url) == migrate.head_revision()
    engine = get_engine(blank_database_url)
    assert set(sa.inspect(engine).get_table_names()) >= EXPECTED_TABLES
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    report = migrate.check(blank_database_url)
    assert report.ok, report


def test_every_model_table_is_created_by_the_migrations():
    assert set(Base.metadata.tables) == EXPECTED_TABLES


def test_check_reports_a_blank_database_as_behind(blank_database_url):
    report = migrate.check(blank_database_url)
    assert not report.ok
    assert report.current is None and report.head == migrate.head_revision()


def test_unknown_revision_is_a_clear_migration_error(database_url):
    with get_engine(database_url).begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(MigrationError, match="revision the migrations do not contain"):
        migrate.check(database_url)
    with pytest.raises(MigrationError, match="f00dfeed"):
        migrate.upgrade(database_url)


def test_missing_migrations_directory_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPERTINY_MIGRATIONS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MigrationError, match="no Alembic migrations"):
        migrate.head_revision()
