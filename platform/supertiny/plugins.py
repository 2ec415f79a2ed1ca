"""The plugin manager. ``load_plugins()`` loads the ``supertiny`` entry-point group once, lazily.

Built-in plugins are listed in the same entry-point group as third-party ones, so both load the
same way. ``SUPERTINY_LOAD_PLUGINS=a,b`` narrows loading to the entry points (or distributions)
named; an empty value loads none. A plugin that fails to import is recorded in ``plugin_errors``
and skipped: it never takes the host down.
"""

import dataclasses
import importlib.metadata
import os
import sys
import threading

import pluggy

from supertiny import hookspecs

ENTRY_POINT_GROUP = "supertiny"

pm = pluggy.PluginManager("supertiny")
pm.add_hookspecs(hookspecs)

plugin_errors: dict[str, str] = {}
# entry-point name -> (module, distribution, version), for `supertiny plugins list`
_origins: dict[str, tuple[str, str | None, str | None]] = {}
_loaded = False
_loading = False
# re-entrant: a plugin whose import calls load_plugins() again gets back at once instead of deadlocking
_load_lock = threading.RLock()


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    builtin: bool
    error: str | None = None


def _wanted(names: str | None) -> set[str] | None:
    if names is None:
        return None
    return {name.strip() for name in names.split(",") if name.strip()}


def load_plugins() -> None:
    """Import and register every plugin of the entry-point group (once per process)."""
    global _loaded, _loading
    if _loaded:
        return
    with _load_lock:  # other threads wait until every plugin is registered
        if _loaded or _loading:
            return
        _loading = True
        try:
            _load_entry_points()
            _loaded = True
        finally:
            _loading = False


def _load_entry_points() -> None:
    wanted = _wanted(os.environ.get("SUPERTINY_LOAD_PLUGINS"))
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist_name = entry_point.dist.name if entry_point.dist else None
        if wanted is not None and entry_point.name not in wanted and dist_name not in wanted:
            continue
        if pm.has_plugin(entry_point.name):
            continue
        try:
            module = entry_point.load()
            pm.register(module, name=entry_point.name)
        except Exception as exc:  # a broken plugin must not take the host down
            plugin_errors[entry_point.name] = f"{type(exc).__name__}: {exc}"
        version = entry_point.dist.version if entry_point.dist else None
        _origins[entry_point.name] = (entry_point.value, dist_name, version)


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with the hooks it implements."""
    load_plugins()
    infos = []
    for name, plugin in pm.list_name_plugin():
        fallback = (getattr(plugin, "__name__", repr(plugin)), None, None)
        module_name, dist, version = _origins.get(name, fallback)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        infos.append(
            PluginInfo(
                name=name,
                module=module_name,
                distribution=dist,
                version=version,
                hooks=hooks,
                builtin=module_name.startswith("supertiny.builtins."),
            )
        )
    for name, error in plugin_errors.items():
        module_name, dist, version = _origins.get(name, ("?", None, None))
        infos.append(PluginInfo(name, module_name, dist, version, [], False, error))
    return sorted(infos, key=lambda info: (not info.builtin, info.name))


def report_plugin_errors(stream=sys.stderr) -> None:
    """Print one line per plugin that failed to load."""
    for name, error in sorted(plugin_errors.items()):
        print(f"warning: plugin {name!r} failed to load and was skipped: {error}", file=stream)
