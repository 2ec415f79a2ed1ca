"""API keys: ``sk-st-`` + 43 random URL-safe characters, shown once when created.

The store keeps the key's first 14 characters (``prefix``, to find the row), a random salt and
sha256(salt + key): the keys are 256-bit random secrets, so a fast salted hash is as strong as a slow
password hash and keeps verification cheap at high request rates.

Whether the server requires ``Authorization: Bearer <key>`` is its ``auth`` setting: ``required``, ``open``,
or ``auto`` (the default): required from the moment the first key is created, for good. Revoking keys never
opens the server; with every key revoked it refuses every request until a new key exists.
"""

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from supertiny.errors import InvalidInputError, NotFoundError, SupertinyError
from supertiny.store.engine import Store
from supertiny.store.tables import ApiKey

KEY_PREFIX = "sk-st-"
PREFIX_LENGTH = len(KEY_PREFIX) + 8


class AuthenticationError(SupertinyError):
    """The request carries no valid API key."""

    http_status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


def _hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()


def create_key(store: Store, name: str) -> tuple[ApiKey, str]:
    """A new active key called ``name``: the row and the secret (which is not stored)."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidInputError(f"invalid key name {name!r}", hint="1 to 200 characters")
    with store.session() as session:
        if session.scalar(sa.select(ApiKey.id).where(ApiKey.name == name)) is not None:
            raise InvalidInputError(f"a key named {name!r} already exists",
                                    hint="revoke it and choose another name, or pick a new name")
    for _ in range(5):
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        row = ApiKey(name=name, prefix=secret[:PREFIX_LENGTH], salt=salt, key_hash=_hash(salt, secret))
        try:
            with store.session() as session:
                session.add(row)
            return row, secret
        except IntegrityError as exc:  # a prefix collision (or a concurrent create of the same name)
            with store.session() as session:
                if session.scalar(sa.select(ApiKey.id).where(ApiKey.name == name)) is not None:
                    raise InvalidInputError(f"a key named {name!r} already exists") from exc
    raise SupertinyError("could not generate a unique API key prefix")


def revoke_key(store: Store, name: str) -> ApiKey:
    """Revoke the key called ``name`` (it stays listed, marked revoked)."""
    with store.session() as session:
        row = session.scalar(sa.select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise NotFoundError(f"no API key named {name!r}", hint="`supertiny keys list` shows them")
        if row.revoked_at is None:
            row.revoked_at = dt.datetime.now(dt.UTC)
    return row


def list_keys(store: Store) -> list[dict[str, Any]]:
    """Every key without its secret: name, prefix, created, revoked."""
    with store.session() as session:
        rows = list(session.scalars(sa.select(ApiKey).order_by(ApiKey.id)))
    return [{"id": row.id, "name": row.name, "prefix": row.prefix, "created": row.created_at,
             "revoked": row.revoked_at, "active": row.revoked_at is None} for row in rows]


def verify_key(store: Store, secret: str) -> int | None:
    """The id of the active key ``secret`` is, or None."""
    if not secret.startswith(KEY_PREFIX) or len(secret) < PREFIX_LENGTH:
        return None
    with store.session() as session:
        row = session.scalar(sa.select(ApiKey).where(ApiKey.prefix == secret[:PREFIX_LENGTH],
                                                     ApiKey.revoked_at.is_(None)))
    if row is None or not hmac.compare_digest(row.key_hash, _hash(row.salt, secret)):
        return None
    return row.id


AUTH_MODES = ("auto", "required", "open")


def any_active_key(store: Store) -> bool:
    with store.session() as session:
        return session.scalar(sa.select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def any_key_created(store: Store) -> bool:
    """Whether a key was ever created (revoked ones count: revoking never turns authentication off)."""
    with store.session() as session:
        return session.scalar(sa.select(ApiKey.id).limit(1)) is not None


class KeyChecker:
    """Checks ``Authorization`` headers, caching answers ``ttl_s`` seconds (a revoked key stops working
    within that time; in ``auto`` mode a first key turns authentication on within that time)."""

    def __init__(self, store: Store, ttl_s: float = 2.0, mode: str = "auto"):
        if mode not in AUTH_MODES:
            raise InvalidInputError(f"unknown auth mode {mode!r}", hint=f"one of {', '.join(AUTH_MODES)}")
        self.store = store
        self.ttl_s = ttl_s
        self.mode = mode
        self._required: tuple[float, bool] | None = None
        self._verified: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def required(self) -> bool:
        if self.mode != "auto":
            return self.mode == "required"
        now = time.monotonic()
        if self._required is None or self._required[0] <= now:
            self._required = (now + self.ttl_s, any_key_created(self.store))
        return self._required[1]

    def peek(self, authorization: str | None) -> tuple[bool, int | None]:
        """``(True, key id)`` when the cache alone answers (no database, no thread hop); ``(False, None)``
        when ``check`` must ask the database. Raises AuthenticationError when the cache knows it is bad."""
        now = time.monotonic()
        if self.mode == "open":
            return True, None
        if self.mode == "auto" and (self._required is None or self._required[0] <= now):
            return False, None
        if self.mode == "auto" and not self._required[1]:  # type: ignore[index]
            return True, None
        secret = self._secret(authorization)
        cached = self._verified.get(hashlib.sha256(secret.encode()).hexdigest())
        if cached is None or cached[0] <= now:
            return False, None
        if cached[1] is None:
            raise AuthenticationError(f"incorrect API key provided: {secret[:PREFIX_LENGTH]}...")
        return True, cached[1]

    @staticmethod
    def _secret(authorization: str | None) -> str:
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationError("missing API key: send the header 'Authorization: Bearer sk-st-...'")
        return secret.strip()

    def check(self, authorization: str | None) -> int | None:
        """The key id of the request (None when no key is required); AuthenticationError otherwise."""
        if not self.required():
            return None
        secret = self._secret(authorization)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        cached = self._verified.get(digest)
        if cached is not None and cached[0] > now:
            key_id = cached[1]
        else:
            key_id = verify_key(self.store, secret)
            with self._lock:
                if len(self._verified) > 10_000:
                    self._verified.clear()
                self._verified[digest] = (now + self.ttl_s, key_id)
        if key_id is None:
            raise AuthenticationError(f"incorrect API key provided: {secret[:PREFIX_LENGTH]}...")
        return key_id
