"""The server through a PostgreSQL outage (a proxy between them is cut): it keeps serving from its cached
policies and keys for the grace period set in its options, logs every request once the database is back,
and answers 503 once the grace period is spent."""

import contextlib
import time
from collections.abc import Iterator

import openai
import pytest
import sqlalchemy as sa
from helpers.chat_models import GOOD_CALL, WEATHER_TOOL, ScriptedModel
from supertiny.config import Settings
from supertiny.policy.policy_store import set_policy
from supertiny.policy.pool import ModelPool
from supertiny.serve.app import ServeOptions, create_app
from supertiny.serve.auth import create_key
from supertiny.serve.background import BackgroundServer
from supertiny.store import migrate
from supertiny.store.engine import Store
from supertiny.store.tables import RequestLog

from bench.tcp_proxy import TcpProxy

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
POSTGRES_ONLY = pytest.mark.parametrize("blank_database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                                        indirect=True)


@contextlib.contextmanager
def _proxied_server(database_url: str, home, grace_s: float) -> Iterator[tuple[TcpProxy, BackgroundServer, Store]]:
    """A server whose store (with the route "weather" on a scripted model) is reached through a TcpProxy."""
    migrate.upgrade(database_url)
    target = sa.engine.make_url(database_url)
    with TcpProxy(target.host, target.port or 5432) as proxy:
        url = target.set(port=proxy.port).render_as_string(hide_password=False)
        store = Store(url)
        pool = ModelPool(lambda name: (_ for _ in ()).throw(FileNotFoundError(name)))
        pool.add("caller", ScriptedModel("caller", GOOD_CALL), concurrency=64)
        options = ServeOptions(policy_ttl_s=0.2, key_ttl_s=0.2, log_flush_interval_s=0.02, outage_grace_s=grace_s)
        app = create_app(Settings(home=home, database_url=url), options, store=store, pool=pool)
        set_policy(store, "weather", "tiny", {"tiny": "caller"})
        server = BackgroundServer(app)
        server.app = app
        yield proxy, server, store


@POSTGRES_ONLY
def test_serving_goes_on_through_an_outage_and_every_request_is_logged_once(blank_database_url, tmp_path):
    with _proxied_server(blank_database_url, tmp_path, grace_s=60) as (proxy, server, store):
        _, secret = create_key(store, "ci")
        with server as live:
            api = openai.OpenAI(base_url=live.base_url, api_key=secret, max_retries=0, timeout=30)
            ids = [api.chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL]).id
                   for _ in range(3)]
            proxy.cut()
            time.sleep(0.5)  # every cached policy and key snapshot is past its TTL
            for _ in range(8):
                answer = api.chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
                assert answer.choices[0].message.tool_calls
                ids.append(answer.id)
            with pytest.raises(openai.AuthenticationError):  # the cached keys still tell a bad key
                openai.OpenAI(base_url=live.base_url, api_key="sk-st-wrong", max_retries=0).models.list()
            assert server.app.state.log_writer.pending >= 8  # kept in memory, not dropped
            proxy.restore()
            assert server.app.state.log_writer.flush(60)
            stats = server.app.state.log_writer.stats
        with store.session() as session:
            logged = list(session.scalars(sa.select(RequestLog.request_id).where(RequestLog.route == "weather")))
    assert sorted(logged) == sorted(ids) and stats.dropped == 0


@POSTGRES_ONLY
def test_past_the_grace_period_requests_get_503_and_are_logged_later(blank_database_url, tmp_path):
    with _proxied_server(blank_database_url, tmp_path, grace_s=0.5) as (proxy, server, store):
        with server as live:
            api = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=30)
            api.chat.completions.create(model="weather", messages=QUESTION)
            proxy.cut()
            time.sleep(1.0)
            with pytest.raises(openai.APIStatusError) as refused:
                api.chat.completions.create(model="weather", messages=QUESTION)
            assert refused.value.status_code == 503
            proxy.restore()
            assert server.app.state.log_writer.flush(60)
        with store.session() as session:
            statuses = sorted(session.scalars(sa.select(RequestLog.status)))
    assert statuses == [200, 503]
