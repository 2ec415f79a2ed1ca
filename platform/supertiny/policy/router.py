"""Execute a route's policy for one request, with failure handling.

When the model a policy chose raises or times out, the policy's other tier answers and the outcome
says so (``fallback``); only when every tier failed does the request fail (502, or 504 on a timeout).
Shadow runs happen on a small bounded background pool and never delay the answer.

A request that requires a call (``tool_choice`` "required" or a named tool) is never answered in text: an
answer without a valid call is asked again once, on the model that wrote it, with an instruction to call a
tool; when that answer has no valid call either, the request fails with 502 ``tool_call_required``. A role
that decodes guided answers such a request under a schema without the reply branch: it cannot answer in text.
"""

import concurrent.futures
import copy
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from supertiny.errors import BackendTimeoutError, EngineUnavailableError, InvalidInputError, ModelError
from supertiny.models.answer_agreement import calls_agree
from supertiny.models.backend import ChatModel, Generation, GenerationOptions
from supertiny.models.guided_calls import with_guided_instruction
from supertiny.policy.base import Decision, PolicyParams, TierError
from supertiny.policy.kinds import answer_problem, answer_summary
from supertiny.policy.policy_store import ActivePolicy
from supertiny.policy.pool import ModelPool
from supertiny.schema import Message, ToolSpec


@dataclasses.dataclass
class RouteRequest:
    """One chat request as the router sees it."""

    request_id: str
    messages: list[Message]
    tools: list[ToolSpec] | None = None
    options: GenerationOptions = dataclasses.field(default_factory=GenerationOptions)
    call_required: bool = False


class ToolCallRequiredError(ModelError):
    """A call was required and the model answered without a valid one, even when asked again."""

    code = "tool_call_required"


def call_instruction(tools: Sequence[ToolSpec] | None) -> Message:
    """The turn that asks a model, once more, for the call it must make."""
    names = ", ".join(tool.name for tool in tools or [])
    only = f"the tool {names}" if tools and len(tools) == 1 else f"one of the tools ({names})"
    return Message(role="user", content=f"Answer only with a call to {only}, with arguments that follow its "
                                        "parameters schema. Do not answer in text.")


@dataclasses.dataclass
class Outcome:
    """How a request was answered."""

    generation: Generation
    policy: ActivePolicy
    role: str  # the role that served
    model: str  # the model(s) that served
    escalated: bool = False
    reason: str | None = None
    confidence: float | None = None
    llm_token_share: float | None = None
    fallback: dict[str, Any] | None = None  # the failure the answer stands in for
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    streamed: bool = False  # the text was already streamed as deltas
    shadow: concurrent.futures.Future | None = None  # resolves to the shadow's log detail
    model_s: float = 0.0  # seconds spent inside models for this request (not counting the shadow)

    def log_detail(self) -> dict[str, Any]:
        detail = {"role": self.role, "kind": self.policy.kind, **self.detail}
        if self.reason:
            detail["reason"] = self.reason
        if self.fallback:
            detail["fallback"] = self.fallback
        detail["model_ms"] = round(self.model_s * 1000, 2)
        return detail


class _Context:
    """The RouteContext a policy decides with: its request and its models, with timeouts."""

    def __init__(self, pool: ModelPool, policy: ActivePolicy, request: RouteRequest):
        self.pool = pool
        self.params: PolicyParams = policy.params
        self.request_id = request.request_id
        self.messages = request.messages
        self.tools = request.tools
        self.options = request.options
        if policy.params.max_prompt_tokens:
            self.options = dataclasses.replace(request.options, max_prompt_tokens=policy.params.max_prompt_tokens)
        self.call_required = request.call_required
        self.model_s = 0.0
        self.decoding: dict[str, str] = {}  # role -> how a role the policy wants guided decoded
        self._roles = policy.params.models()

    def model_name(self, role: str) -> str:
        try:
            return self._roles[role]
        except KeyError:
            raise ModelError(f"this policy has no {role!r} model (it has {', '.join(self._roles)})") from None

    def model(self, role: str, in_process: bool = False) -> ChatModel:
        name = self.model_name(role)
        try:
            return self.pool.get(name, in_process)
        except Exception as exc:
            raise TierError(role, name, exc) from exc

    def hold(self, *roles: str, in_process: bool = False) -> Any:
        """Lease ``roles``' models and hold a serving slot of each; gives model name -> leased model."""
        return self.pool.slot([self.model_name(role) for role in roles], self.params.timeout_s, in_process)

    def _failed(self, role: str, model: ChatModel, exc: Exception) -> TierError:
        if isinstance(exc, EngineUnavailableError):  # the next request re-opens it: a restarted engine serves again
            self.pool.forget(self.model_name(role), model)
        return TierError(role, self.model_name(role), exc)

    def _decode_guided(self, role: str, model: ChatModel) -> bool:
        """Whether ``role`` answers this request under the tools' JSON Schemas; records in ``decoding`` how every
        role the policy wants guided decoded, and why not guided."""
        if role not in self.params.guided or not self.tools:
            return False
        if model.capabilities.guided:
            self.decoding[role] = "guided"
            return True
        self.decoding[role] = f"free: {self.model_name(role)} runs on {model.capabilities.engine or model.backend}"
        return False

    def _options(self, started: float) -> GenerationOptions:
        remaining = max(0.001, self.params.timeout_s - (time.monotonic() - started))
        timeout = remaining if self.options.timeout_s is None else min(self.options.timeout_s, remaining)
        return dataclasses.replace(self.options, timeout_s=timeout)

    def generate(self, role: str, messages: list[Message] | None = None) -> Generation:
        return self._answers(role, messages or self.messages)[0]

    def generate_samples(self, role: str, n: int, temperature: float) -> list[Generation]:
        """``n`` answers of ``role``'s model sampled at ``temperature``, decoded as :meth:`generate` decodes the role,
        in one request, within the policy's timeout (raises TierError)."""
        return self._answers(role, self.messages, n, temperature)

    def _answers(self, role: str, messages: Sequence[Message], n: int = 1,
                 temperature: float | None = None) -> list[Generation]:
        """One answer with the request's own options, or ``n`` sampled at ``temperature``."""
        model = self.model(role)
        started = time.monotonic()
        try:
            with self.hold(role) as held:
                model = held[self.model_name(role)]  # leased: not closed while it answers
                guided = self._decode_guided(role, model)
                conversation = with_guided_instruction(messages) if guided else messages
                options = dataclasses.replace(self._options(started), guided=guided,
                                              call_required=guided and self.call_required)
                if temperature is None:
                    return [model.generate(conversation, self.tools, options)]
                options = dataclasses.replace(options, temperature=temperature, logprobs=False)
                return model.generate_samples(conversation, self.tools, options, n=n)
        except InvalidInputError:
            raise  # the request itself is unusable: no other tier would do better
        except Exception as exc:
            raise self._failed(role, model, exc) from exc
        finally:
            self.model_s += time.monotonic() - started

    def stream(self, role: str) -> Iterator[str | Generation]:
        model = self.model(role)
        started = time.monotonic()
        try:
            with self.hold(role) as held:
                model = held[self.model_name(role)]  # leased: not closed while it streams
                yield from model.stream(self.messages, self.tools, self._options(started))
        except InvalidInputError:
            raise
        except Exception as exc:
            raise self._failed(role, model, exc) from exc
        finally:
            self.model_s += time.monotonic() - started


def _failure(error: TierError) -> dict[str, Any]:
    return {"role": error.role, "model": error.model, "error": f"{type(error.error).__name__}: {error.error}"[:500],
            "timed_out": error.timed_out}


def _final_error(errors: Sequence[TierError]) -> Exception:
    what = "; ".join(str(error) for error in errors)
    if errors and errors[-1].timed_out:
        return BackendTimeoutError(f"no model answered in time: {what}")
    if errors and all(isinstance(error.error, EngineUnavailableError) for error in errors):
        return EngineUnavailableError(f"no model could answer: {what}")  # 503: retry once the engine is back
    return ModelError(f"no model could answer: {what}")


class Router:
    """Runs policies against a :class:`ModelPool`; ``shadow_workers`` bounds background shadow runs."""

    def __init__(self, pool: ModelPool, shadow_workers: int = 1, shadow_backlog: int = 16):
        self.pool = pool
        self._shadow_pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, shadow_workers),
                                                                  thread_name_prefix="supertiny-shadow")
        self._shadow_backlog = shadow_backlog
        self._shadow_inflight = 0
        self._lock = threading.Lock()

    def route(self, policy: ActivePolicy, request: RouteRequest) -> Outcome:
        """Answer ``request`` by ``policy``."""
        context = _Context(self.pool, policy, request)
        outcome = self._route(policy, context)
        if context.call_required and answer_problem(outcome.generation, context.tools, True) is not None:
            outcome = self._ask_for_call(context, outcome)
        if context.decoding:
            outcome.detail["decoding"] = dict(context.decoding)
        return outcome

    def _route(self, policy: ActivePolicy, context: _Context) -> Outcome:
        decision, failure = self._decide(policy, context)
        if decision is not None and decision.generation is not None:
            return self._outcome(policy, context, decision, decision.generation, decision.role)
        errors = [failure] if failure else []
        if decision is not None:
            try:
                return self._outcome(policy, context, decision, context.generate(decision.role), decision.role)
            except TierError as exc:
                errors.append(exc)
        return self._fall_back(policy, context, decision, errors)

    def route_stream(self, policy: ActivePolicy, request: RouteRequest) -> Iterator[str | Outcome]:
        """Text deltas while the serving model writes, then the :class:`Outcome`.

        Deltas are live only when the policy picks one model up front and no tools were offered (with
        tools, an answer is a call or text only once complete); otherwise the outcome comes alone and
        ``outcome.streamed`` is False.
        """
        if request.tools:  # (a required call is checked there too)
            yield self.route(policy, request)
            return
        context = _Context(self.pool, policy, request)
        decision, failure = self._decide(policy, context)
        if decision is None or decision.generation is not None:
            if decision is not None and decision.generation is not None:
                yield self._outcome(policy, context, decision, decision.generation, decision.role)
            else:
                yield self._fall_back(policy, context, decision, [failure] if failure else [])
            return
        started_streaming = False
        try:
            for item in context.stream(decision.role):
                if isinstance(item, Generation):
                    outcome = self._outcome(policy, context, decision, item, decision.role)
                    outcome.streamed = True
                    yield outcome
                    return
                started_streaming = True
                yield item
        except TierError as exc:
            if started_streaming:
                raise _final_error([exc]) from exc
            yield self._fall_back(policy, context, decision, [exc])

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)

    def _ask_for_call(self, context: _Context, outcome: Outcome) -> Outcome:
        """The required call, asked for once more from the model that answered without one (the LLM where a
        token-level policy mixed both)."""
        roles = context.params.models()
        role = outcome.role if outcome.role in roles else ("llm" if "llm" in roles else next(iter(roles)))
        first = answer_problem(outcome.generation, context.tools, True)
        try:
            generation = context.generate(role, [*context.messages, call_instruction(context.tools)])
        except TierError as exc:
            raise ToolCallRequiredError(f"a tool call was required; {context.model_name(role)} answered without a "
                                        f"valid one ({first}) and failed when asked again: {exc}") from exc
        problem = answer_problem(generation, context.tools, True)
        if problem is not None:
            raise ToolCallRequiredError(f"a tool call was required; {context.model_name(role)} answered without a "
                                        f"valid one twice ({first}, then {problem}, after being asked to call)")
        outcome.detail["call_required"] = {"asked_again": True, "first_answer": first,
                                           "first": answer_summary(outcome.generation, context, True)}
        outcome.generation, outcome.role, outcome.model = generation, role, context.model_name(role)
        outcome.confidence = generation.confidence
        outcome.model_s = context.model_s
        return outcome

    # --- internals ------------------------------------------------------------------------------

    def _decide(self, policy: ActivePolicy, context: _Context) -> tuple[Decision | None, TierError | None]:
        try:
            return policy.policy.decide(policy.params, context), None
        except TierError as exc:  # a policy that generates itself (hybrid-token) lost a model
            return None, exc

    def _fall_back(self, policy: ActivePolicy, context: _Context, decision: Decision | None,
                   errors: list[TierError]) -> Outcome:
        if decision is not None and decision.failure is not None:
            errors = [decision.failure, *errors]
        failed = errors[-1] if errors else None
        if decision is not None and decision.fallback_generation is not None and decision.fallback_role \
                and policy.params.fallback:
            outcome = self._outcome(policy, context, decision, decision.fallback_generation, decision.fallback_role)
            outcome.fallback = _failure(failed) if failed else None
            return outcome
        other = policy.params.fallback_for(failed.role) if failed else None
        if other is None or failed is None or other in {error.role for error in errors}:
            raise _final_error(errors)
        try:
            generation = context.generate(other)
        except TierError as exc:
            raise _final_error([*errors, exc]) from exc
        decision = decision or Decision(role=other)
        outcome = self._outcome(policy, context, dataclasses.replace(decision, shadow_role=None), generation, other)
        outcome.fallback = _failure(failed)
        outcome.llm_token_share = None
        return outcome

    def _outcome(self, policy: ActivePolicy, context: _Context, decision: Decision, generation: Generation,
                 role: str) -> Outcome:
        model = decision.model if role == decision.role and decision.model else context.model_name(role)
        confidence = decision.confidence if role == decision.role and decision.confidence is not None \
            else generation.confidence
        outcome = Outcome(
            generation=generation, policy=policy, role=role, model=model, escalated=decision.escalated,
            reason=decision.reason, confidence=confidence, llm_token_share=decision.llm_token_share,
            detail=dict(decision.detail), model_s=context.model_s or generation.latency_s,
            fallback=_failure(decision.failure) if decision.failure else None,
        )
        if decision.shadow_role:
            outcome.shadow = self._start_shadow(context, decision.shadow_role, generation)
            if outcome.shadow is None:
                outcome.detail["shadow"] = {"skipped": "shadow backlog full"}
        return outcome

    def _start_shadow(self, context: _Context, role: str, served: Generation) -> concurrent.futures.Future | None:
        with self._lock:
            if self._shadow_inflight >= self._shadow_backlog:
                return None
            self._shadow_inflight += 1

        shadow_context = copy.copy(context)  # the shadow's decoding is its own log's, not the served answer's
        shadow_context.decoding = {}

        def run() -> dict[str, Any]:
            try:
                shadow = shadow_context.generate(role)
            except TierError as exc:
                return {"role": role, "model": exc.model, "error": str(exc.error)[:500]}
            except Exception as exc:  # the shadow never fails the request it shadows
                return {"role": role, "error": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                with self._lock:
                    self._shadow_inflight -= 1
            summary = answer_summary(shadow, context)
            return {"role": role, "model": context.model_name(role), "agree": calls_agree(served, shadow), **summary,
                    **({"decoding": shadow_context.decoding[role]} if role in shadow_context.decoding else {})}

        try:
            return self._shadow_pool.submit(run)
        except RuntimeError:  # shut down
            with self._lock:
                self._shadow_inflight -= 1
            return None
