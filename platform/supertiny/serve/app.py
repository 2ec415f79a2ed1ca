"""The OpenAI-compatible server: ``create_app(settings)`` builds a FastAPI app whose state (store, model
pool, policy store, router, log writer, metrics, key checker) lives on ``app.state``.

Routes: ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models`` (the routes with an active
policy), ``GET /health`` (with the model memory budget, the bytes in use and the resident models),
``GET /metrics`` (Prometheus text). Every error is an OpenAI-style body.
"""

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from supertiny import __version__
from supertiny.config import Settings, get_settings
from supertiny.policy.policy_store import PolicyStore
from supertiny.policy.pool import ModelPool
from supertiny.policy.router import Router
from supertiny.runtime.model_memory import memory_budget
from supertiny.schema.openai import ModelCard, ModelList
from supertiny.serve.auth import AuthenticationError, KeyChecker
from supertiny.serve.chat import chat_completions
from supertiny.serve.errors import RouteNotFoundError, error_response, install_error_handlers
from supertiny.serve.metrics import Metrics
from supertiny.serve.openapi import install_openapi
from supertiny.serve.request_log import RequestLogWriter
from supertiny.store.engine import Store

log = logging.getLogger("supertiny.serve")
OPTIONS_ENV = "SUPERTINY_SERVE_OPTIONS"  # JSON of ServeOptions, for worker processes


@dataclasses.dataclass
class ServeOptions:
    """Server knobs (the routing itself is in the stored policies)."""

    policy_ttl_s: float = 2.0  # a changed policy applies within this time, without a restart
    key_ttl_s: float = 2.0  # a revoked key stops working within this time
    auth: str = "auto"  # required | open | auto: required once the first API key was created
    # while the database is unreachable, cached policies and keys keep serving this long (requests are logged
    # once it is back); after that requests get 503
    outage_grace_s: float = 300.0
    local_model_concurrency: int | None = None  # requests one in-process model takes at once (None: its batch size)
    remote_model_concurrency: int = 64  # requests in flight to one endpoint model
    max_concurrent_requests: int = 256  # worker threads routing requests
    default_max_tokens: int = 512
    max_tokens_limit: int = 4096
    request_timeout_s: float | None = None  # on top of each policy's timeout_s
    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64  # deepest nesting of objects and arrays a request body may have
    shadow_workers: int = 1
    shadow_backlog: int = 16
    log_batch_size: int = 200
    log_flush_interval_s: float = 0.2
    log_max_pending: int = 100_000
    log_close_timeout_s: float = 10.0
    preload: bool = False  # open the models of every active route at startup (in the background)
    model_memory: str | None = None  # the model memory budget (8GiB, 8000MB, bytes, 40%); None: the settings'

    @classmethod
    def from_env(cls) -> "ServeOptions":
        raw = os.environ.get(OPTIONS_ENV)
        return cls(**json.loads(raw)) if raw else cls()

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def create_app(settings: Settings | None = None, options: ServeOptions | None = None, *,
               store: Store | None = None, pool: ModelPool | None = None) -> FastAPI:
    """The server app. ``store`` and ``pool`` may be given (tests, embedding); by default the store
    is ``settings.database_url`` (migrated to head) and models open through ``open_model``."""
    import anyio

    from supertiny.plugins import load_plugins

    load_plugins()  # before any request thread looks a policy kind up
    settings = settings or get_settings()
    options = options or ServeOptions()
    if store is None:
        from supertiny.store.session import open_store

        store = open_store(settings)
    pool = pool or ModelPool.for_store(store, local_concurrency=options.local_model_concurrency,
                                       remote_concurrency=options.remote_model_concurrency)
    _apply_model_memory(pool, settings, options)
    metrics = Metrics()
    writer = RequestLogWriter(store, batch_size=options.log_batch_size, flush_interval_s=options.log_flush_interval_s,
                              max_pending=options.log_max_pending)
    metrics.watch_log_writer(writer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        app.state.limiter = anyio.CapacityLimiter(options.max_concurrent_requests)
        if options.preload:
            import threading

            threading.Thread(target=_preload, args=(app,), name="supertiny-preload", daemon=True).start()
        try:
            yield
        finally:
            app.state.router.close()
            await run_in_threadpool(writer.close, options.log_close_timeout_s)
            metrics.close()

    app = FastAPI(title="supertiny", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.options = options
    app.state.store = store
    app.state.models = pool
    app.state.policies = PolicyStore(store, ttl_s=options.policy_ttl_s, outage_grace_s=options.outage_grace_s)
    app.state.router = Router(pool, shadow_workers=options.shadow_workers, shadow_backlog=options.shadow_backlog)
    app.state.log_writer = writer
    app.state.metrics = metrics
    app.state.keys = KeyChecker(store, ttl_s=options.key_ttl_s, mode=options.auth,
                                outage_grace_s=options.outage_grace_s)
    app.state.limiter = anyio.CapacityLimiter(options.max_concurrent_requests)
    app.state.started = time.time()
    install_error_handlers(app)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", get_model, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    install_openapi(app)
    return app


def _apply_model_memory(pool: ModelPool, settings: Settings, options: ServeOptions) -> None:
    """Give the pool's model cache the budget ``--model-memory`` or ``SUPERTINY_MODEL_MEMORY`` sets, if any."""
    if options.model_memory:
        pool.cache.budget_bytes = memory_budget(options.model_memory)
    elif settings.model_memory:
        pool.cache.budget_bytes = settings.model_memory_bytes


def app_from_env() -> FastAPI:
    """The app factory uvicorn workers import (``supertiny serve --workers N``): settings and options
    come from the environment the CLI set."""
    logging.basicConfig(level=logging.INFO)
    return create_app(get_settings(), ServeOptions.from_env())


def _preload(app: FastAPI) -> None:
    try:
        for policy in app.state.policies.routes():
            for name in policy.params.models().values():
                app.state.models.get(name)
                log.info("preloaded model %s for route %s", name, policy.route)
    except Exception as exc:  # a model that does not open fails its requests later, with fallback
        log.warning("preloading models failed: %s", exc)


async def _authenticate(request: Request) -> Response | None:
    try:
        await run_in_threadpool(request.app.state.keys.check, request.headers.get("authorization"))
    except AuthenticationError as exc:
        return error_response(exc, headers={"www-authenticate": "Bearer"})
    return None


def _card(policy: Any) -> ModelCard:
    created = int(policy.created_at.timestamp()) if policy.created_at else 0
    return ModelCard(id=policy.route, created=created,
                     supertiny={"kind": policy.kind, "version": policy.version, "models": policy.params.models()})


async def list_models(request: Request) -> Response:
    denied = await _authenticate(request)
    if denied is not None:
        return denied
    routes = await run_in_threadpool(request.app.state.policies.routes)
    return JSONResponse(ModelList(data=[_card(policy) for policy in routes]).model_dump(mode="json"))


async def get_model(request: Request, model: str) -> Response:
    denied = await _authenticate(request)
    if denied is not None:
        return denied
    policy = await run_in_threadpool(request.app.state.policies.active_policy, model)
    if policy is None:
        return error_response(RouteNotFoundError(f"the model {model!r} does not exist"))
    return JSONResponse(_card(policy).model_dump(mode="json"))


async def health(request: Request) -> Response:
    state = request.app.state

    def database_ok() -> bool:
        from supertiny.store.engine import check_connection

        try:
            check_connection(state.store.url)
            return True
        except Exception:
            return False

    database = await run_in_threadpool(database_ok)
    body = {
        "status": "ok" if database else "degraded", "version": __version__,
        "database": "ok" if database else "unavailable",
        "uptime_s": round(time.time() - state.started, 1), "models_loaded": state.models.loaded(),
        "model_memory": state.models.memory(),
        "request_log": {"pending": state.log_writer.pending, **dataclasses.asdict(state.log_writer.stats)},
    }
    return JSONResponse(body)


async def metrics_endpoint(request: Request) -> Response:
    content, content_type = request.app.state.metrics.render()
    return Response(content, media_type=content_type)
