"""One task's tool environment: a desk of its own, and the agent's calls run against it."""

from typing import Any

import pydantic
from supertiny.domain import ToolEnvironment
from supertiny.schema import ParsedCall

from supertiny_helpdesk.service import HelpdeskError, HelpdeskService
from supertiny_helpdesk.tools import TOOL_NAMES, HelpdeskTools


class HelpdeskEnvironment(ToolEnvironment):
    def __init__(self, desk: HelpdeskService):
        self.desk = desk
        self.tools = HelpdeskTools(desk)

    def execute(self, call: ParsedCall) -> Any:
        """Run one call; anything wrong with it raises HelpdeskError with a message for the model."""
        if call.name not in TOOL_NAMES:
            raise HelpdeskError(f"unknown tool {call.name!r}; the tools are {', '.join(TOOL_NAMES)}")
        # validate_call checks the arguments against the method's signature and coerces "12.5" to 12.5
        tool = pydantic.validate_call(getattr(self.tools, call.name))
        try:
            return tool(**call.arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{error['loc'][0]}: {error['msg']}" for error in exc.errors())
            raise HelpdeskError(f"invalid arguments for {call.name}: {problems}") from None
