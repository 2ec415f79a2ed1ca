"""supertiny-bfcl: the Berkeley Function Calling Leaderboard as a supertiny domain."""

from supertiny_bfcl.checker import check_answer, check_call
from supertiny_bfcl.domain import BfclDomain

__all__ = ["BfclDomain", "check_answer", "check_call"]
