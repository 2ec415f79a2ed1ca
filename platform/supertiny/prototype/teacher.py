"""Resolve a teacher name to a LangChain chat model (any registered model can be a teacher)."""

from typing import Any

from supertiny.store import Store


def open_chat_model(store: Store, name: str) -> Any:
    """A LangChain chat model over the registered model (or HF directory) ``name``."""
    from supertiny.models.langchain_adapter import SupertinyChatModel
    from supertiny.runtime.loading import open_model

    return SupertinyChatModel(model=open_model(store, name))
