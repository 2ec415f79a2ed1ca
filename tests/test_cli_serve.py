"""``supertiny serve`` as a user runs it: a real process on a port, answering OpenAI-style."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from conftest import REPO_ROOT
from supertiny.route.policy_store import set_policy


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_runs_the_api_until_interrupted(sqlite_store, tmp_path):
    set_policy(sqlite_store, "weather", "tiny", {"tiny": str(tmp_path / "no-such-model")})
    port = free_port()
    env = {**os.environ, "SUPERTINY_HOME": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "cli.py", "--db", sqlite_store.url, "serve", "--port", str(port),
                                "--no-preload", "--log-level", "warning"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert [model["id"] for model in models["data"]] == ["weather"]
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                            json={"model": "weather", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert answer.status_code == 502 and "no-such-model" in answer.json()["error"]["message"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"supertiny serving on http://127.0.0.1:{port}/v1" in output


def test_worker_processes_build_their_app_from_the_environment(sqlite_store, tmp_path, monkeypatch):
    from supertiny.serve.app import OPTIONS_ENV, ServeOptions, app_from_env

    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    monkeypatch.setenv(OPTIONS_ENV, ServeOptions(max_tokens_limit=77, preload=False).to_env())
    app = app_from_env()
    assert app.state.options.max_tokens_limit == 77 and app.state.store.url == sqlite_store.url
