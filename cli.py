"""Thin launcher: ``python cli.py ...`` is ``supertiny ...`` without installing the console script."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "platform"))

from supertiny.cli import main

if __name__ == "__main__":
    main()
