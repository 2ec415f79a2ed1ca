"""``supertiny serve`` as a user runs it: a real process on a port, answering OpenAI-style."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from conftest import REPO_ROOT
from supertiny.policy.policy_store import set_policy


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


def test_metrics_of_several_workers_count_every_request(sqlite_store, tiny_model_dir, tmp_path):
    set_policy(sqlite_store, "weather", "tiny", {"tiny": str(tiny_model_dir)})
    port, scratch = free_port(), tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(SUPERTINY_HOME=str(tmp_path), TMPDIR=str(scratch))  # TMPDIR: where serve makes its metrics dir
    process = subprocess.Popen([sys.executable, "cli.py", "--db", sqlite_store.url, "serve", "--port", str(port),
                                "--workers", "2", "--log-level", "warning"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base, total = f"http://127.0.0.1:{port}", 12
    try:
        deadline = time.monotonic() + 90
        while True:  # both workers have built their app (each writes its gauges' file) and one answers
            pids = {path.stem.rsplit("_", 1)[1] for path in scratch.glob("supertiny-prometheus-*/gauge_sum_*.db")}
            try:
                if len(pids) == 2 and httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.2)

        def ask(_: int) -> int:  # a new connection each time, so the kernel may hand it to either worker
            return httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
                "model": "weather", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}).status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(ask, range(total))) == [200] * total
        for _ in range(4):  # whichever worker answers the scrape shows the sum over both
            text = httpx.get(f"{base}/metrics", timeout=10).text
            assert f'supertiny_requests_total{{route="weather",status="200"}} {total}.0' in text
            assert f'supertiny_served_total{{route="weather",tier="tiny"}} {total}.0' in text
            assert f'supertiny_request_latency_seconds_count{{route="weather"}} {total}.0' in text
            assert 'supertiny_tier_share{route="weather",tier="tiny"} 1.0' in text
            assert "supertiny_request_log_pending" in text
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert not list(scratch.glob("supertiny-prometheus-*")), "the metrics directory outlived the server"
