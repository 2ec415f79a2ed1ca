"""The entry point: registers the ``helpdesk`` domain (cheap: tasks are generated on first use)."""

import supertiny

from supertiny_helpdesk.domain import HelpdeskDomain


@supertiny.hookimpl
def register_domains(register):
    register(HelpdeskDomain())
