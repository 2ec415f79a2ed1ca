"""Registries built from the ``register_*`` hooks: one ``get_*()`` per kind of plugin item.

Each registry maps ``item.name`` to the item. Two plugins registering the same name is an error
that names both, rather than one silently shadowing the other.
"""

import difflib
from collections.abc import Callable
from typing import Any

from supertiny.errors import NotFoundError, PluginError
from supertiny.plugins import load_plugins, pm

KINDS = {
    "domain": "register_domains",
    "backend": "register_backends",
    "trainer": "register_trainers",
    "compressor": "register_compressors",
    "policy": "register_policies",
    "token_reward": "register_token_rewards",
}


def collect(kind: str) -> dict[str, Any]:
    """Every registered item of ``kind``, by name."""
    load_plugins()
    items: dict[str, Any] = {}

    def register(item: Any) -> None:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"a plugin registered a {kind} without a name: {item!r}")
        if name in items and items[name] is not item:
            raise PluginError(f"two plugins register a {kind} named {name!r}")
        items[name] = item

    hook: Callable[..., Any] = getattr(pm.hook, KINDS[kind])
    hook(register=register)
    return items


def lookup(kind: str, name: str) -> Any:
    """The registered item of ``kind`` called ``name``, or a NotFoundError listing what exists."""
    items = collect(kind)
    if name in items:
        return items[name]
    known = sorted(items)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or 'none'}"
    raise NotFoundError(f"unknown {kind.replace('_', ' ')} {name!r}", hint=hint)


def get_domains() -> dict[str, Any]:
    return collect("domain")


def get_backends() -> dict[str, Any]:
    return collect("backend")


def get_trainers() -> dict[str, Any]:
    return collect("trainer")


def get_compressors() -> dict[str, Any]:
    return collect("compressor")


def get_policies() -> dict[str, Any]:
    return collect("policy")


def get_token_rewards() -> dict[str, Any]:
    return collect("token_reward")
