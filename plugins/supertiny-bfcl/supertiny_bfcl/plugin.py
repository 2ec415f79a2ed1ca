"""The entry point: registers the ``bfcl`` domain (cheap: the data loads on first use)."""

import supertiny

from supertiny_bfcl.domain import BfclDomain


@supertiny.hookimpl
def register_domains(register):
    register(BfclDomain())
