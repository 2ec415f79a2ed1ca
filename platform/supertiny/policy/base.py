"""What a routing policy kind is: a params model and one decision method.

A kind is registered through ``register_policies`` and looked up by name in the plugin registry.
``decide(params, context)`` either names the role that serves the request (the router then runs that
model, streaming when it can) or, when the choice depends on an answer (cascade) or mixes models
token by token (hybrid-token), produces the answer itself through ``context``.
"""

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from supertiny.models.backend import ChatModel, Generation, GenerationOptions
from supertiny.schema import Message, ToolSpec


class PolicyParams(BaseModel):
    """Params every kind has. Each kind subclasses this with its model names and knobs."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=120.0, gt=0, description="Seconds a tier may take before the other answers.")
    fallback: bool = Field(default=True, description="When a tier fails or times out, let the other tier answer.")
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="Longest prompt (messages and tools, in tokens) the route takes; longer "
        "ones get 400 context_length_exceeded before any model work. Default: each model's own context.")
    guided: list[str] = Field(
        default_factory=list, description="Roles whose model decodes under the offered tools' JSON Schemas (guided "
        "decoding: a whole answer, never a call that breaks them) when a request offers tools. A model that cannot "
        "(not on an engine that supports it) decodes freely, and the request's log says so.")

    @field_validator("guided", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        if isinstance(value, str):  # -p guided=llm or guided=tiny,llm
            return [role.strip() for role in value.split(",") if role.strip()]
        return value

    @model_validator(mode="after")
    def _guided_roles_are_roles(self) -> "PolicyParams":
        unknown = [role for role in self.guided if role not in self.models()]
        if unknown:
            raise ValueError(f"guided names {', '.join(map(repr, unknown))}, not a role of this policy (its roles: "
                             f"{', '.join(self.models()) or 'none'})")
        return self

    def models(self) -> dict[str, str]:
        """Role -> model name of every model the policy uses (the fields named after roles)."""
        return {}

    def fallback_for(self, role: str) -> str | None:
        """The role that answers when ``role`` fails: the other model, if the policy has two."""
        if not self.fallback:
            return None
        others = [other for other in self.models() if other != role]
        return others[0] if len(others) == 1 else None


@dataclasses.dataclass
class Decision:
    """What a policy decided for one request."""

    role: str  # the role that serves: "tiny", "llm", "a", "b", "primary", "hybrid" ...
    generation: Generation | None = None  # set when the policy already produced the answer
    model: str | None = None  # the model name(s) that served; default: the role's model
    escalated: bool = False
    reason: str | None = None  # why it escalated: "invalid_call", "schema", "low_confidence", ...
    confidence: float | None = None
    llm_token_share: float | None = None
    shadow_role: str | None = None  # run this role in the background and log agreement
    # an answer to serve if the chosen role fails (cascade: the tiny answer it rejected)
    fallback_generation: Generation | None = None
    fallback_role: str | None = None
    failure: "TierError | None" = None  # a tier failure the policy already worked around (logged)
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


class TierError(Exception):
    """A model of the policy raised or timed out."""

    def __init__(self, role: str, model: str, error: BaseException):
        super().__init__(f"{role} ({model}) failed: {type(error).__name__}: {error}")
        self.role = role
        self.model = model
        self.error = error

    @property
    def timed_out(self) -> bool:
        from supertiny.errors import BackendTimeoutError

        return isinstance(self.error, BackendTimeoutError | TimeoutError)


class RouteContext(Protocol):
    """What a policy sees of a request and of its models."""

    request_id: str
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] | None
    options: GenerationOptions
    call_required: bool  # tool_choice "required" or a named tool

    def model_name(self, role: str) -> str:
        """The model name of ``role``."""
        ...

    def model(self, role: str, in_process: bool = False) -> ChatModel:
        """The opened model of ``role`` (raises TierError when it cannot be opened); ``in_process`` opens its
        weights in this process even when an engine serves it (token-level decoding)."""
        ...

    def generate(self, role: str) -> Generation:
        """Answer the request with ``role``'s model, within the policy's timeout (raises TierError)."""
        ...

    def generate_samples(self, role: str, n: int, temperature: float) -> list[Generation]:
        """``n`` answers of ``role``'s model sampled at ``temperature`` (raises TierError)."""
        ...

    def hold(self, *roles: str, in_process: bool = False) -> Any:
        """A context manager holding a lease on ``roles``' models (never closed while held) and a serving slot of
        each, for direct model use; it gives model name -> leased model."""
        ...


class Policy(abc.ABC):
    """A routing policy kind."""

    name: ClassVar[str]
    description: ClassVar[str]
    params_model: ClassVar[type[PolicyParams]]

    @abc.abstractmethod
    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        """Choose who answers this request (or answer it, when the choice depends on the answer)."""

    def parse_params(self, params: dict[str, Any]) -> PolicyParams:
        """Validate stored or given params (raises pydantic.ValidationError)."""
        return self.params_model.model_validate(params)
