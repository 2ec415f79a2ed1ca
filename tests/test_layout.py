"""The source layout: platform/ is a source root, never a package shadowing the standard library."""

import subprocess
import sys

from conftest import REPO_ROOT


def test_platform_dir_is_not_a_package():
    assert not (REPO_ROOT / "platform" / "__init__.py").exists()


def test_import_platform_is_the_standard_library_module():
    code = "import platform, sysconfig; print(platform.__file__); print(sysconfig.get_paths()['stdlib'])"
    for extra_path in ("", str(REPO_ROOT / "platform")):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
            env={"PYTHONPATH": extra_path, "PATH": "/usr/bin:/bin"},
        ).stdout.split()
        module_file, stdlib = out
        assert module_file.startswith(stdlib), module_file


def test_cli_launcher_matches_console_script():
    result = subprocess.run([sys.executable, "cli.py", "--version"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("supertiny, version")
