"""API keys: ``sk-st-`` + 43 random URL-safe characters, shown once when created.

The store keeps the key's first 14 characters (``prefix``, to find the row), a random salt and
sha256(salt + key): the keys are 256-bit random secrets, so a fast salted hash is as strong as a slow
password hash and keeps verification cheap at high request rates.

Whether the server requires ``Authorization: Bearer <key>`` is its ``auth`` setting: ``required``, ``open``,
or ``auto`` (the default): required from the moment the first key is created, for good. Revoking keys never
opens the server; with every key revoked it refuses every request until a new key exists.
"""

import dataclasses
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


AUTH_MODES = ("auto", "required", "open")


def any_active_key(store: Store) -> bool:
    with store.session() as session:
        return session.scalar(sa.select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


@dataclasses.dataclass(frozen=True)
class KeySnapshot:
    """What verifying keys needs, read in one query: whether any key was ever created, and each active key's
    prefix, id, salt and hash."""

    any_created: bool
    active: dict[str, tuple[int, str, str]]

    @classmethod
    def read(cls, store: Store) -> "KeySnapshot":
        with store.session() as session:
            any_created = session.scalar(sa.select(ApiKey.id).limit(1)) is not None
            rows = session.execute(sa.select(ApiKey.prefix, ApiKey.id, ApiKey.salt, ApiKey.key_hash)
                                   .where(ApiKey.revoked_at.is_(None))).all()
        return cls(any_created, {row.prefix: (row.id, row.salt, row.key_hash) for row in rows})

    def key_id(self, secret: str) -> int | None:
        """The id of the active key ``secret`` is, or None."""
        entry = self.active.get(secret[:PREFIX_LENGTH]) if secret.startswith(KEY_PREFIX) else None
        if entry is None or not hmac.compare_digest(entry[2], _hash(entry[1], secret)):
            return None
        return entry[0]


class KeyChecker:
    """Checks ``Authorization`` headers against a snapshot of the active keys (salted hashes) re-read every
    ``ttl_s`` seconds: a revoked key stops working, and in ``auto`` mode a first key turns authentication on,
    within that time. While the database is unreachable the last snapshot keeps serving for
    ``outage_grace_s`` more seconds; after that requests get 503."""

    def __init__(self, store: Store, ttl_s: float = 2.0, mode: str = "auto", outage_grace_s: float = 300.0):
        if mode not in AUTH_MODES:
            raise InvalidInputError(f"unknown auth mode {mode!r}", hint=f"one of {', '.join(AUTH_MODES)}")
        self.store = store
        self.ttl_s = ttl_s
        self.mode = mode
        self.outage_grace_s = outage_grace_s
        self._snapshot: tuple[float, KeySnapshot] | None = None  # (read at, snapshot)
        self._lock = threading.Lock()

    def _current(self) -> KeySnapshot:
        now = time.monotonic()
        taken = self._snapshot
        if taken is not None and now - taken[0] < self.ttl_s:
            return taken[1]
        with self._lock:
            if self._snapshot is not taken and self._snapshot is not None:  # another thread just re-read it
                return self._snapshot[1]
            try:
                snapshot = KeySnapshot.read(self.store)
            except SupertinyError:
                if taken is not None and now - taken[0] < self.ttl_s + self.outage_grace_s:
                    return taken[1]  # the database is away: the last known keys, for a bounded time
                raise
            self._snapshot = (time.monotonic(), snapshot)
            return snapshot

    def peek(self, authorization: str | None) -> tuple[bool, int | None]:
        """``(True, key id)`` when the snapshot answers without a database read (no thread hop); ``(False,
        None)`` when ``check`` must re-read it. Raises AuthenticationError when the snapshot knows it is bad."""
        if self.mode == "open":
            return True, None
        taken = self._snapshot
        if taken is None or time.monotonic() - taken[0] >= self.ttl_s:
            return False, None
        return True, self._verify(taken[1], authorization)

    def check(self, authorization: str | None) -> int | None:
        """The key id of the request (None when no key is required); AuthenticationError otherwise."""
        if self.mode == "open":
            return None
        return self._verify(self._current(), authorization)

    def _verify(self, snapshot: KeySnapshot, authorization: str | None) -> int | None:
        if self.mode == "auto" and not snapshot.any_created:
            return None
        secret = self._secret(authorization)
        key_id = snapshot.key_id(secret)
        if key_id is None:
            raise AuthenticationError(f"incorrect API key provided: {secret[:PREFIX_LENGTH]}...")
        return key_id

    @staticmethod
    def _secret(authorization: str | None) -> str:
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationError("missing API key: send the header 'Authorization: Bearer sk-st-...'")
        return secret.strip()
