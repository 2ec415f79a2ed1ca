"""The command line: every group is there, the db commands work, and user mistakes are one line."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT
from supertiny.cli import cli

GROUPS = ["db", "plugins", "domains", "models", "harvest", "data", "train", "compress", "eval", "policy",
          "keys", "serve", "demo"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_every_group():
    result = run("--help")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert set(GROUPS) <= listed


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_documents_itself(group):
    result = run(group, "--help")
    assert result.exit_code == 0
    assert len(result.output.splitlines()) > 3


def test_db_upgrade_current_check(blank_database_url):
    upgraded = run("--db", blank_database_url, "db", "upgrade")
    assert upgraded.exit_code == 0 and "is at revision" in upgraded.output
    current = json.loads(run("--db", blank_database_url, "db", "current", "--json").output)
    assert current["up_to_date"] and current["current"] == current["head"]
    checked = run("--db", blank_database_url, "db", "check")
    assert checked.exit_code == 0 and "the models and the migrations agree" in checked.output


def test_db_check_on_a_blank_database_fails(tmp_path):
    result = run("--db", f"sqlite:///{tmp_path}/blank.db", "db", "check")
    assert result.exit_code == 1 and "run `supertiny db upgrade`" in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "error: malformed database URL 'not a url'"),
        ("mysql://root@127.0.0.1/test", "error: unsupported database 'mysql'"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/nothing", "error: cannot connect to the database at "
                                                               "postgresql+psycopg://postgres@127.0.0.1:1/nothing"),
        ("sqlite:////proc/no/such.db", "error: cannot create the SQLite database's folder /proc/no"),
        ("sqlite:////proc/such.db", "error: cannot connect to the database at sqlite:////proc/such.db"),
    ],
)
def test_bad_database_urls_give_one_line_and_exit_1(url, message):
    result = subprocess.run([sys.executable, "cli.py", "--db", url, "db", "upgrade"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_database_url_from_environment(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", url)
    result = run("db", "upgrade")
    assert result.exit_code == 0 and str(tmp_path) in result.output


def test_default_database_lives_in_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SUPERTINY_DATABASE_URL", raising=False)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path / "home"))
    assert run("db", "upgrade").exit_code == 0
    assert (tmp_path / "home" / "supertiny.db").exists()
