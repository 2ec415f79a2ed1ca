"""Routing policies in the store: append-only versions per route, exactly one active.

``set_policy`` appends a version and makes it active in one transaction; ``activate`` makes an older
version active again (rollback). :class:`PolicyStore` is what the server reads through: a short-TTL
cache, so a policy changed from the CLI (or by another replica) applies without a restart.
"""

import dataclasses
import datetime as dt
import hashlib
import random
import re
import threading
import time
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from supertiny.errors import ConfigError, InvalidInputError, NotFoundError, SupertinyError
from supertiny.policy.base import Policy, PolicyParams
from supertiny.store.engine import Store
from supertiny.store.tables import RoutingPolicy

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")
_RETRIES = 10


def _lock_route(session: Any, route: str) -> None:
    """Serialise writers of one route's policy for this transaction (PostgreSQL; SQLite serialises writes)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"routing_policy:{route}".encode()).digest()[:8], "big", signed=True)
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


@dataclasses.dataclass(frozen=True)
class ActivePolicy:
    """A stored policy version, with its kind looked up and its params validated."""

    id: int
    route: str
    version: int
    kind: str
    params: PolicyParams
    policy: Policy
    note: str | None = None
    created_at: dt.datetime | None = None


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: problem; other: problem``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def policy_kind(kind: str) -> Policy:
    """The registered policy kind ``kind`` (NotFoundError listing the known ones otherwise)."""
    from supertiny.registry import lookup

    return lookup("policy", kind)


def validate_params(kind: str, params: dict[str, Any]) -> PolicyParams:
    policy = policy_kind(kind)
    try:
        return policy.parse_params(params)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid params for a {kind} policy: {validation_message(exc)}") from exc


def _check_route(route: str) -> str:
    if not ROUTE_NAME.match(route or ""):
        raise InvalidInputError(f"invalid route name {route!r}",
                                hint="1 to 200 characters: letters, digits and . _ : / @ + -, no spaces")
    return route


def check_models_exist(store: Store, kind: str, params: dict[str, Any]) -> None:
    """NotFoundError (naming the closest registered model) unless every model the params name is registered
    or is a model directory or .gguf file: a route must not be stored only to answer 502."""
    from supertiny.runtime.loading import resolve_model

    for model in validate_params(kind, params).models().values():
        resolve_model(store, model, in_process=True)


def set_policy(store: Store, route: str, kind: str, params: dict[str, Any], note: str | None = None) -> RoutingPolicy:
    """Append a new version of ``route``'s policy and make it the active one, atomically."""
    _check_route(route)
    parsed = validate_params(kind, params)
    stored = parsed.model_dump(mode="json")
    for attempt in range(_RETRIES):
        try:
            with store.session() as session:
                _lock_route(session, route)
                latest = session.scalar(sa.select(sa.func.max(RoutingPolicy.version))
                                        .where(RoutingPolicy.route == route))
                session.execute(sa.update(RoutingPolicy).where(RoutingPolicy.route == route, RoutingPolicy.active)
                                .values(active=False))
                row = RoutingPolicy(route=route, version=(latest or 0) + 1, kind=kind, params=stored, active=True,
                                    note=note)
                session.add(row)
                session.flush()
            return row
        except IntegrityError:  # a concurrent writer took that version number: read again
            if attempt == _RETRIES - 1:
                raise
            time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
    raise AssertionError("unreachable")


def activate(store: Store, route: str, version: int) -> RoutingPolicy:
    """Make stored version ``version`` of ``route`` the active one (a rollback, or a roll forward)."""
    with store.session() as session:
        _lock_route(session, route)
        row = session.scalar(sa.select(RoutingPolicy).where(RoutingPolicy.route == route,
                                                            RoutingPolicy.version == version))
        if row is None:
            known = list(session.scalars(sa.select(RoutingPolicy.version).where(RoutingPolicy.route == route)
                                         .order_by(RoutingPolicy.version)))
            hint = f"versions: {', '.join(map(str, known))}" if known else "no policy was ever set for this route"
            raise NotFoundError(f"route {route!r} has no policy version {version}", hint=hint)
        validate_params(row.kind, row.params)
        session.execute(sa.update(RoutingPolicy).where(RoutingPolicy.route == route, RoutingPolicy.active,
                                                       RoutingPolicy.id != row.id).values(active=False))
        session.execute(sa.update(RoutingPolicy).where(RoutingPolicy.id == row.id).values(active=True))
        session.flush()
        row.active = True
    return row


def disable(store: Store, route: str) -> RoutingPolicy:
    """Deactivate ``route``: it stops being served (its history stays; ``activate`` brings it back)."""
    with store.session() as session:
        row = session.scalar(sa.select(RoutingPolicy).where(RoutingPolicy.route == route, RoutingPolicy.active))
        if row is None:
            raise NotFoundError(f"route {route!r} has no active policy")
        session.execute(sa.update(RoutingPolicy).where(RoutingPolicy.id == row.id).values(active=False))
        row.active = False
    return row


def history(store: Store, route: str) -> list[RoutingPolicy]:
    """Every version of ``route``'s policy, oldest first."""
    with store.session() as session:
        rows = list(session.scalars(sa.select(RoutingPolicy).where(RoutingPolicy.route == route)
                                    .order_by(RoutingPolicy.version)))
    if not rows:
        raise NotFoundError(f"no policy was ever set for route {route!r}", hint=_routes_hint(store))
    return rows


def active_row(store: Store, route: str) -> RoutingPolicy | None:
    with store.session() as session:
        return session.scalar(sa.select(RoutingPolicy).where(RoutingPolicy.route == route, RoutingPolicy.active))


def active_rows(store: Store) -> list[RoutingPolicy]:
    """The active policy of every route, by route name."""
    with store.session() as session:
        return list(session.scalars(sa.select(RoutingPolicy).where(RoutingPolicy.active).order_by(RoutingPolicy.route)))


def load_active(row: RoutingPolicy) -> ActivePolicy:
    """A stored row as a servable policy (ConfigError when its kind or params are no longer valid)."""
    try:
        params = validate_params(row.kind, row.params)
        policy = policy_kind(row.kind)
    except SupertinyError as exc:
        raise ConfigError(f"route {row.route!r} policy v{row.version} cannot be served: {exc}") from exc
    return ActivePolicy(id=row.id, route=row.route, version=row.version, kind=row.kind, params=params,
                        policy=policy, note=row.note, created_at=row.created_at)


def policy_summary(row: RoutingPolicy) -> dict[str, Any]:
    return {"route": row.route, "version": row.version, "kind": row.kind, "active": row.active,
            "params": row.params, "note": row.note, "created": row.created_at, "id": row.id}


def _routes_hint(store: Store) -> str:
    routes = [row.route for row in active_rows(store)]
    return f"routes: {', '.join(routes)}" if routes else "no route has a policy yet: `supertiny policy set`"


class PolicyStore:
    """Reads active policies through a cache that lives ``ttl_s`` seconds.

    When the database cannot be reached, the last known policy of a route keeps being served for
    ``outage_grace_s`` seconds past its expiry; after that the database error reaches the caller (503).
    """

    def __init__(self, store: Store, ttl_s: float = 2.0, outage_grace_s: float = 300.0):
        self.store = store
        self.ttl_s = ttl_s
        self.outage_grace_s = outage_grace_s
        self._cache: dict[str, tuple[float, ActivePolicy | Exception | None]] = {}
        self._routes: tuple[float, list[ActivePolicy]] | None = None
        self._lock = threading.Lock()

    def peek(self, route: str) -> tuple[bool, ActivePolicy | None]:
        """``(True, policy or None)`` when the cache alone answers, else ``(False, None)``."""
        cached = self._cache.get(route)
        if cached is None or cached[0] <= time.monotonic():
            return False, None
        return True, self._unwrap(cached[1])

    def active_policy(self, route: str) -> ActivePolicy | None:
        """The active policy of ``route``, or None when the route has none."""
        now = time.monotonic()
        cached = self._cache.get(route)
        if cached is not None and cached[0] > now:
            return self._unwrap(cached[1])
        try:
            row = active_row(self.store, route)
        except SupertinyError:
            if cached is not None and not isinstance(cached[1], Exception) and now < cached[0] + self.outage_grace_s:
                return cached[1]  # stale beats down while the database is unreachable, for a bounded time
            raise
        value: ActivePolicy | Exception | None
        try:
            value = load_active(row) if row is not None else None
        except ConfigError as exc:
            value = exc
        with self._lock:
            self._cache[route] = (now + self.ttl_s, value)
        return self._unwrap(value)

    def routes(self) -> list[ActivePolicy]:
        """Every route that has a servable active policy."""
        now = time.monotonic()
        if self._routes is not None and self._routes[0] > now:
            return self._routes[1]
        try:
            rows = active_rows(self.store)
        except SupertinyError:
            if self._routes is not None and now < self._routes[0] + self.outage_grace_s:
                return self._routes[1]
            raise
        routes = []
        for row in rows:
            try:
                routes.append(load_active(row))
            except ConfigError:
                continue
        self._routes = (now + self.ttl_s, routes)
        return routes

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
            self._routes = None

    @staticmethod
    def _unwrap(value: ActivePolicy | Exception | None) -> ActivePolicy | None:
        if isinstance(value, Exception):
            raise value
        return value
