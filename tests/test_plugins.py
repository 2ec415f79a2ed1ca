"""The plugin registry: one test per hook (named after it), loading, narrowing and broken plugins."""

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT
from supertiny import hookimpl, hookspecs, registry
from supertiny.errors import NotFoundError, PluginError

HOOK_NAMES = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
                    if name.startswith("register_"))


def _registering_plugin(hook_name: str, *items):
    def implementation(register):
        for item in items:
            register(item)

    implementation.__name__ = hook_name
    return types.SimpleNamespace(**{hook_name: hookimpl(implementation)})


def _named(name: str):
    return types.SimpleNamespace(name=name)


def _check_registry_hook(register_plugin, hook_name, getter):
    item = _named(f"throwaway-{hook_name}")
    register_plugin(_registering_plugin(hook_name, item))
    assert getter()[item.name] is item


def test_hook_register_domains(register_plugin):
    _check_registry_hook(register_plugin, "register_domains", registry.get_domains)


def test_hook_register_backends(register_plugin):
    _check_registry_hook(register_plugin, "register_backends", registry.get_backends)


def test_hook_register_trainers(register_plugin):
    _check_registry_hook(register_plugin, "register_trainers", registry.get_trainers)


def test_hook_register_compressors(register_plugin):
    _check_registry_hook(register_plugin, "register_compressors", registry.get_compressors)


def test_hook_register_policies(register_plugin):
    _check_registry_hook(register_plugin, "register_policies", registry.get_policies)


def test_hook_register_token_rewards(register_plugin):
    _check_registry_hook(register_plugin, "register_token_rewards", registry.get_token_rewards)


def test_hook_register_commands(register_plugin):
    @hookimpl
    def register_commands(cli):
        @cli.command(name="hello-from-plugin")
        def hello():
            click.echo("hello")

    from supertiny.cli import cli
    from supertiny.plugins import pm

    register_plugin(types.SimpleNamespace(register_commands=register_commands))
    pm.hook.register_commands(cli=cli)
    try:
        result = CliRunner().invoke(cli, ["hello-from-plugin"])
        assert result.exit_code == 0 and result.output == "hello\n"
    finally:
        cli.commands.pop("hello-from-plugin", None)


def test_every_hook_has_a_test_and_a_readme_entry():
    tests = {name for name in globals() if name.startswith("test_hook_")}
    readme = (REPO_ROOT / "README.md").read_text()
    for hook in [*HOOK_NAMES, "register_commands"]:
        assert f"test_hook_{hook}" in tests, f"hook {hook} has no test named test_hook_{hook}"
        assert f"`{hook}" in readme, f"hook {hook} is not documented in README.md"


def test_duplicate_names_are_an_error(register_plugin):
    register_plugin(_registering_plugin("register_policies", _named("dup")))
    register_plugin(_registering_plugin("register_policies", _named("dup")))
    with pytest.raises(PluginError, match="two plugins register a policy named 'dup'"):
        registry.get_policies()


def test_unknown_name_suggests_the_closest(register_plugin):
    register_plugin(_registering_plugin("register_domains", _named("weather")))
    with pytest.raises(NotFoundError, match="unknown domain 'wether'") as info:
        registry.lookup("domain", "wether")
    assert "did you mean 'weather'" in str(info.value)


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
    """An installed-looking distribution on a path of its own, with a ``supertiny`` entry point."""
    dist_info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[supertiny]\n{lines}\n")
    for relative, text in files.items():
        (root / relative).write_text(text)
    return root


def _run_cli(args, extra_path: Path, load: str | None = None):
    env = {key: value for key, value in os.environ.items() if key != "SUPERTINY_LOAD_PLUGINS"}
    env["PYTHONPATH"] = str(extra_path)
    if load is not None:
        env["SUPERTINY_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT)


@pytest.fixture
def third_party_plugins(tmp_path):
    good = (
        "import supertiny\n"
        "@supertiny.hookimpl\n"
        "def register_commands(cli):\n"
        "    @cli.command(name='greet')\n"
        "    def greet():\n"
        "        print('hi from a third-party plugin')\n"
    )
    _fake_distribution(tmp_path, "supertiny-good", {"good": "good_plugin"}, {"good_plugin.py": good})
    _fake_distribution(tmp_path, "supertiny-broken", {"broken": "broken_plugin"},
                       {"broken_plugin.py": "import does_not_exist_anywhere\n"})
    return tmp_path


def test_broken_plugin_is_reported_by_name_and_does_not_take_the_cli_down(third_party_plugins, tmp_path):
    result = _run_cli(["--db", f"sqlite:///{tmp_path}/x.db", "greet"], third_party_plugins)
    assert result.returncode == 0, result.stderr
    assert "hi from a third-party plugin" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line]
    assert warnings == ["warning: plugin 'broken' failed to load and was skipped: "
                        "ModuleNotFoundError: No module named 'does_not_exist_anywhere'"]

    listing = _run_cli(["plugins", "list", "--json"], third_party_plugins)
    assert listing.returncode == 1
    by_name = {info["name"]: info for info in json.loads(listing.stdout)}
    assert by_name["broken"]["error"].startswith("ModuleNotFoundError")
    assert by_name["good"]["hooks"] == ["register_commands"]
    assert by_name["good"]["distribution"] == "supertiny-good"


def test_load_plugins_env_narrows_loading(third_party_plugins):
    only_good = _run_cli(["plugins", "list", "--json"], third_party_plugins, load="good")
    assert only_good.returncode == 0, only_good.stderr
    assert [info["name"] for info in json.loads(only_good.stdout)] == ["good"]
    by_dist = _run_cli(["plugins", "list", "--json"], third_party_plugins, load="supertiny-broken")
    assert [info["name"] for info in json.loads(by_dist.stdout)] == ["broken"]
    none = _run_cli(["plugins", "list", "--json"], third_party_plugins, load="")
    assert json.loads(none.stdout) == []


def test_builtins_load_through_the_entry_point_group(third_party_plugins):
    result = _run_cli(["plugins", "list", "--json"], third_party_plugins, load="supertiny")
    assert result.returncode == 0, result.stderr
    infos = json.loads(result.stdout)
    assert infos, "supertiny ships built-in plugins"
    for info in infos:
        assert info["builtin"] and info["distribution"] == "supertiny"
        assert info["module"].startswith("supertiny.builtins.")
        assert info["hooks"], info
