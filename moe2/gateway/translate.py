"""OpenAI <-> moe2, both ways, without I/O: a request body becomes the fleet's ``Prompt``, an
``Answer`` becomes OpenAI's response (in one piece, or the server-sent events that end a
stream), and whatever cannot be answered becomes a :class:`GatewayError`.

Every function here is pure (no network, no clock but the ``created`` it is given), so the whole
translation is testable without a fleet (``tests/moe2/test_gateway_translate.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from messages.answers import Answer
from messages.budgets import Budgets
from messages.expert_key import expert_key, parse_name
from messages.prompts import Prompt
from messages.stream import StreamChunk, answered_by
from moe2.gateway.errors import GatewayError
from moe2.gateway.guard import BodyError
from moe2.gateway.models import (
    ChatRequest,
    CompletionRequest,
    Moe2Options,
    RequestBody,
)

ENSEMBLE_MODEL = "moe2"
DEFAULT_MAX_TOKENS = 256  # a chat's
DEFAULT_COMPLETION_TOKENS = 16  # a text completion's, as OpenAI's
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

R = TypeVar("R", bound=BaseModel)


# -- errors -------------------------------------------------------------------------------


def answer_error(answer: Answer) -> GatewayError | None:
    """The HTTP error an answer stands for, or None when it carries an answer."""
    if answer.status in ("ok", "partial") and answer.answer is not None:
        return None
    reason = answer.error or "no expert answered"
    if answer.status == "rejected":
        return GatewayError(400, reason, code="prompt_rejected")
    if answer.status == "busy":
        retry = answer.retry_after_s or 1.0
        return GatewayError(
            429,
            reason,
            kind="rate_limit_error",
            code="fleet_busy",
            headers={"Retry-After": str(max(1, round(retry)))},
        )
    deadline = "deadline" in reason or any(
        f.reason.startswith("no result within") for f in answer.failed
    )
    if deadline:
        return GatewayError(504, f"deadline passed: {reason}", kind="timeout", code="deadline")
    details = "; ".join(f"{expert_key(f.agent_id, f.expert_id)}: {f.reason}" for f in answer.failed)
    return GatewayError(
        503,
        reason + (f" ({details})" if details else ""),
        kind="service_unavailable",
        code="no_expert_answered",
    )


def body_error(exc: BodyError) -> GatewayError:
    """A body the gateway would not read (too large, too slow, never finished)."""
    code = {413: "body_too_large", 408: "body_timeout"}.get(exc.status)
    return GatewayError(exc.status, exc.message, code=code)


# -- requests -----------------------------------------------------------------------------


def request_prompt(
    raw: bytes, chat: bool, timeout_s: float, active: dict[str, list[str]]
) -> tuple[RequestBody, Prompt]:
    """A request body, parsed and checked, and the fleet prompt it asks for. ``active``: the
    fleet's active experts (expert id -> agents), which a named model must be one of."""
    body = parse_body(ChatRequest if chat else CompletionRequest, raw)
    body.refuse_unsupported()
    check_model(body.model, active)
    if isinstance(body, ChatRequest):
        max_tokens = body.max_completion_tokens or body.max_tokens
        prompt = build_prompt(
            body, messages=chat_turns(body), text=None, max_tokens=max_tokens, timeout_s=timeout_s
        )
        return body, prompt
    assert isinstance(body, CompletionRequest)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(texts) != 1:
        raise GatewayError(400, "prompt must be one string", param="prompt")
    prompt = build_prompt(
        body,
        messages=None,
        text=texts[0],
        max_tokens=body.max_tokens or DEFAULT_COMPLETION_TOKENS,
        timeout_s=timeout_s,
    )
    return body, prompt


def parse_body(model: type[R], raw: bytes) -> R:
    """A request from its JSON body; a 400 that names the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise GatewayError(400, "the body is not valid JSON") from None
        where = ".".join(str(p) for p in first["loc"]) or None
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise GatewayError(400, message, param=where) from None


def check_model(model: str, active: dict[str, list[str]]) -> None:
    """A 404 unless ``model`` is the ensemble, an active expert, or one on an agent serving it."""
    if model == ENSEMBLE_MODEL:
        return
    expert, agent = parse_name(model)
    if expert in active and (not agent or agent in active[expert]):
        return
    names = ", ".join([ENSEMBLE_MODEL, *sorted(active)])
    raise GatewayError(
        404,
        f"The model {model!r} does not exist or is not active in this fleet (models: {names})",
        code="model_not_found",
        param="model",
    )


def chat_turns(request: ChatRequest) -> list[dict[str, str]]:
    """The chat's turns as the fleet's messages (``developer`` speaks as ``system``)."""
    turns = []
    for i, turn in enumerate(request.messages):
        role = ROLES.get(turn.role)
        if role is None:
            raise GatewayError(
                400,
                f"messages[{i}].role {turn.role!r} is not supported (system, developer, user, "
                "assistant)",
                param=f"messages.{i}.role",
            )
        turns.append({"role": role, "content": turn.text()})
    return turns


def build_prompt(
    body: RequestBody,
    *,
    messages: list[dict[str, str]] | None,
    text: str | None,
    max_tokens: int | None,
    timeout_s: float,
) -> Prompt:
    """The fleet prompt for a request; a field the contract refuses is a 400 that names it."""
    extras = body.moe2 or Moe2Options()
    experts = extras.experts
    if body.model != ENSEMBLE_MODEL:
        if experts is not None:
            raise GatewayError(
                400, "moe2.experts goes with model 'moe2'; a named model is one expert"
            )
        experts = [body.model]
    delay = _delays(extras)
    try:
        budgets = (
            Budgets(energy_j=extras.energy_j, delay_s=delay, top_k=extras.top_k)
            if extras.energy_j is not None or delay or extras.top_k is not None
            else None
        )
        return Prompt(
            prompt=text,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=0.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            seed=body.seed,
            stop=_stops(body.stop),
            stream=body.stream,
            experts=experts,
            category=extras.category,
            budgets=budgets,
            timeout_s=extras.timeout_s or timeout_s,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise GatewayError(400, f"{where or 'request'}: {first['msg']}", param=where) from None


def _delays(extras: Moe2Options) -> dict[str, float]:
    """The delay budgets per category: ``moe2.delay_s`` as given, or a number for the request's
    category."""
    if isinstance(extras.delay_s, dict):
        return dict(extras.delay_s)
    if extras.delay_s is None:
        return {}
    if extras.category is None:
        raise GatewayError(400, "moe2.delay_s as a number needs moe2.category", param="moe2")
    return {extras.category: extras.delay_s}


def _stops(stop: str | list[str] | None) -> list[str] | None:
    if stop is None or stop == []:
        return None
    return [stop] if isinstance(stop, str) else stop


# -- responses ----------------------------------------------------------------------------


def usage(answer: Answer) -> dict[str, int]:
    """OpenAI's ``usage``: the tokens of every expert that answered."""
    prompt = sum(e.prompt_tokens for e in answer.experts)
    completion = sum(e.completion_tokens for e in answer.experts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def breakdown(answer: Answer) -> dict[str, Any]:
    """The ``moe2`` field of a response: who answered, with what weight, latency and energy."""
    sources = sorted({e.energy_source for e in answer.experts if e.energy_source})
    return {
        "request_id": answer.request_id,
        "status": answer.status,
        "latency_s": answer.latency_s,
        "energy_j": answer.energy_j,
        "energy_source": sources[0] if len(sources) == 1 else (sources or None),
        "energy_estimated": answer.energy_estimated,
        "experts": [
            {
                "expert_id": e.expert_id,
                "agent_id": e.agent_id,
                "weight": e.weight,
                "text": e.text,
                "latency_s": e.latency_s,
                "compute_s": e.compute_s,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "energy_j": e.energy_j,
                "energy_source": e.energy_source,
            }
            for e in answer.experts
        ],
        "failed": [f.model_dump(exclude={"schema_version"}) for f in answer.failed],
        "left_out": [f.model_dump(exclude={"schema_version"}) for f in answer.left_out],
        "budgets": None
        if answer.budgets is None
        else answer.budgets.model_dump(exclude={"schema_version"}),
    }


def finish_reason(answer: Answer, max_tokens: int) -> Literal["stop", "length"]:
    """``length`` when the expert whose text is the answer used all its tokens."""
    winner = next((e for e in answer.experts if e.text == answer.answer), None)
    return "length" if winner is not None and winner.completion_tokens >= max_tokens else "stop"


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def rest_of(text: str, sent: str) -> str:
    """What a stream still owes of the answer ``text`` after ``sent``. The stream previews the
    leading expert; the answer is the ensemble's: when it continues what was streamed, the rest
    follows; otherwise nothing does (the final chunk's ``moe2.answer`` says what the ensemble
    answered)."""
    return text[len(sent) :] if text.startswith(sent) and len(text) > len(sent) else ""


def model_card(model: str, created: int, agents: list[str] | None = None) -> dict[str, Any]:
    """One model in OpenAI's shape (``GET /v1/models`` lists them, ``/v1/models/{id}`` gives
    one); an expert's lists the agents that serve it under ``moe2``."""
    card: dict[str, Any] = {"id": model, "object": "model", "created": created, "owned_by": "moe2"}
    if agents is not None:
        card["moe2"] = {"agents": sorted(agents)}
    return card


def models_list(created: int, active: dict[str, list[str]]) -> dict[str, Any]:
    """``GET /v1/models``: the ensemble, then each active expert with its agents."""
    data = [model_card(ENSEMBLE_MODEL, created)]
    data += [model_card(expert, created, agents) for expert, agents in sorted(active.items())]
    return {"object": "list", "data": data}


def model_retrieved(model: str, created: int, active: dict[str, list[str]]) -> dict[str, Any]:
    """``GET /v1/models/{model}``: the ensemble, an active expert, or an expert on one agent
    (``expert@agent``) that serves it; a 404 ``model_not_found`` in OpenAI's shape otherwise."""
    check_model(model, active)
    if model == ENSEMBLE_MODEL:
        return model_card(model, created)
    expert, agent = parse_name(model)
    return model_card(model, created, [agent] if agent else active[expert])


def no_embeddings() -> GatewayError:
    """``POST /v1/embeddings``: the fleet has no embedding model to serve it with."""
    return GatewayError(
        400,
        "this fleet serves no embedding model: moe2's experts generate text (POST "
        "/v1/chat/completions and /v1/completions); /v1/embeddings has nothing to answer with",
        code="model_not_supported",
        param="model",
    )


@dataclass(frozen=True)
class Reply:
    """One response, in one piece or as events: what each of its pieces carries."""

    ident: str
    created: int
    model: str
    chat: bool
    max_tokens: int
    include_usage: bool = False

    @classmethod
    def of(cls, request_id: str, body: RequestBody, prompt: Prompt, created: int) -> Reply:
        chat = isinstance(body, ChatRequest)
        options = body.stream_options
        return cls(
            ident=("chatcmpl-" if chat else "cmpl-") + request_id,
            created=created,
            model=body.model,
            chat=chat,
            max_tokens=prompt.max_tokens,
            include_usage=options is not None and options.include_usage,
        )

    def whole(self, answer: Answer) -> dict[str, Any]:
        """The OpenAI response to a request answered in one piece."""
        text = answer.answer or ""
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if self.chat
            else {"index": 0, "text": text, "logprobs": None}
        )
        choice["finish_reason"] = finish_reason(answer, self.max_tokens)
        return {
            "id": self.ident,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(answer),
            "moe2": breakdown(answer),
        }

    def chunk(self, delta: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        """One streamed chunk: ``delta`` of text (None: none), and the finish reason if last."""
        if self.chat:
            piece: dict[str, Any] = {
                "index": 0,
                "delta": {} if delta is None else {"content": delta},
            }
        else:
            piece = {"index": 0, "text": delta or "", "logprobs": None}
        piece["finish_reason"] = finish
        return {
            "id": self.ident,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [piece],
            **extra,
        }

    def opening(self) -> list[bytes]:
        """The events before the first token: a chat names the assistant's role."""
        if not self.chat:
            return []
        first = self.chunk(None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return [sse(first)]

    def token(self, text: str) -> bytes:
        return sse(self.chunk(text))

    def closing(self, answer: Answer, sent: str, streamed: str | None = None) -> list[bytes]:
        """The last events of a stream that relayed ``sent`` (``streamed``'s tokens): the rest
        of the answer, the finish, the usage (when asked for). ``[DONE]`` is not one of them.
        The finish names the experts the answer came from and whether the streamed content is
        the answer (``stream_is_answer``; when not, ``answer`` is what the ensemble said)."""
        out = []
        text = answer.answer or ""
        rest = rest_of(text, sent)
        if rest:
            out.append(sse(self.chunk(rest)))
        extra = {
            "moe2": {
                **breakdown(answer),
                "answer": text,
                "answered_by": answered_by(answer),
                "streamed": streamed,
                "stream_is_answer": sent + rest == text,
            }
        }
        out.append(sse(self.chunk(None, finish_reason(answer, self.max_tokens), **extra)))
        if self.include_usage:
            tail = self.chunk(None)
            tail["choices"] = []
            tail["usage"] = usage(answer)
            out.append(sse(tail))
        return out


@dataclass
class Relayed:
    """The tokens a stream relayed so far: in order, each once, empty ones skipped."""

    sent: str = ""
    expected: int = 0
    source: str | None = None  # the expert (expert@agent) whose tokens were relayed

    def take(self, chunk: StreamChunk) -> str | None:
        """The text of ``chunk`` to relay, or None for one already relayed, late or empty."""
        if chunk.seq < self.expected or not chunk.text:
            self.expected = max(self.expected, chunk.seq + 1)
            return None
        self.expected = chunk.seq + 1
        self.sent += chunk.text
        self.source = expert_key(chunk.agent_id, chunk.expert_id)
        return chunk.text
