"""Open the store a command works on, migrating it to head first when it is blank or behind."""

from supertiny.config import Settings
from supertiny.store import migrate
from supertiny.store.engine import Store

_ready: set[str] = set()


def open_store(settings: Settings) -> Store:
    """The store at ``settings.database_url``, upgraded to the migrations' head (once per process)."""
    url = settings.database_url
    if url not in _ready:
        if migrate.current_revision(url) != migrate.head_revision():
            migrate.upgrade(url)
        _ready.add(url)
    return Store(url)
