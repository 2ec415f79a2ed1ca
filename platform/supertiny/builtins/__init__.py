"""supertiny's built-in plugins. Each module here is listed under ``[project.entry-points.supertiny]``
in pyproject.toml and is written exactly as a third-party plugin would be."""
