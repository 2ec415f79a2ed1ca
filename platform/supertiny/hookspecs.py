"""Every hook a supertiny plugin can implement.

Registry hooks take a ``register`` callback and return nothing; each call to ``register(item)``
adds one named item (``item.name``) to the matching registry in :mod:`supertiny.registry`.
"""

import pluggy

hookspec = pluggy.HookspecMarker("supertiny")


@hookspec
def register_domains(register):
    """Register domains: a name, tools, a task source with splits and categories, and a verifier."""


@hookspec
def register_backends(register):
    """Register inference backends that turn chat messages + tools into an assistant message."""


@hookspec
def register_trainers(register):
    """Register stage-2 training algorithms: a name, a config dataclass and a trainer."""


@hookspec
def register_compressors(register):
    """Register stage-3 compression algorithms: a name, a config dataclass and a compressor."""


@hookspec
def register_policies(register):
    """Register routing policy kinds: a name, a params model and a decision method."""


@hookspec
def register_token_rewards(register):
    """Register token rewards that score each token the tiny model proposes in hybrid decoding."""


@hookspec
def register_commands(cli):
    """Add extra click commands or groups to the ``supertiny`` command line."""
