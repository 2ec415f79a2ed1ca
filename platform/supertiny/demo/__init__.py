"""The end-to-end demo: ``supertiny demo`` (see :mod:`supertiny.demo.runner`)."""
