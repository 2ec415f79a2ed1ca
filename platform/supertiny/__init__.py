"""supertiny: distil a tool-calling LLM into a super-tiny model and route traffic between them."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("supertiny")

__all__ = ["__version__", "hookimpl"]
