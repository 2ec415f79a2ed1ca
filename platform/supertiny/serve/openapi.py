"""The server's OpenAPI document: the request and response bodies of every endpoint and the errors each can
answer, so schema-driven clients and fuzzers see the API the server enforces.

The chat endpoint parses its body itself (to bound its size and nesting before pydantic sees it), so its
request schema is added here from :class:`ChatCompletionRequest` rather than inferred by FastAPI.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from supertiny.schema.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)

REF = "#/components/schemas/{model}"
ERROR_MEANINGS = {
    400: "The request is malformed, breaks a limit, or does not fit the model's context "
         "(error.code says which: invalid_value, missing_required_parameter, context_length_exceeded ...).",
    401: "An API key is required and the Authorization header has none, or a revoked or unknown one.",
    404: "No route of that name has an active policy (error.code model_not_found).",
    405: "The endpoint does not take this method.",
    413: "The request body is larger than the server's limit.",
    500: "An unexpected failure; the request is logged with its error.",
    502: "No tier of the route could answer (error.code tool_call_required: a required call was never made).",
    503: "The engine serving the route is unreachable, or the store is down past the outage allowance.",
    504: "No tier answered within the route's time limit.",
}
ENDPOINT_ERRORS = {
    ("/v1/chat/completions", "post"): (400, 401, 404, 405, 413, 500, 502, 503, 504),
    ("/v1/models", "get"): (401, 405, 500, 503),
    ("/v1/models/{model}", "get"): (401, 404, 405, 500, 503),
    ("/health", "get"): (405, 500),
    ("/metrics", "get"): (405, 500),
}


# one server-sent event of a streamed answer: its data is a chat.completion.chunk as JSON, the last one [DONE]
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"},
                            "retry": {"type": "integer"}}}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (served at ``/openapi.json``) the full document, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                           description="OpenAI-compatible chat completions, routed by each route's stored policy.")
    models = [(ChatCompletionRequest, "validation"), (ChatCompletion, "serialization"),
              (ChatCompletionChunk, "serialization"), (ErrorResponse, "serialization"),
              (ModelList, "serialization"), (ModelCard, "serialization")]
    refs, definitions = models_json_schema(models, ref_template=REF)

    def _ref(model: type) -> dict[str, str]:  # a model used in both modes gets a -Input/-Output name
        mode = "validation" if model is ChatCompletionRequest else "serialization"
        return {"$ref": refs[(model, mode)]["$ref"]}

    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(definitions.get("$defs", {}))
    components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                "description": "A key from `supertiny keys create`."}}
    paths = document["paths"]
    paths = {path.replace("{model:path}", "{model}"): item for path, item in paths.items()}
    document["paths"] = paths
    chat = paths["/v1/chat/completions"]["post"]
    chat["summary"] = "Create a chat completion (JSON, or server-sent events with stream: true)"
    chat["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(ChatCompletionRequest)}}}
    chat["responses"] = {"200": {"description": "The answer, or its chunks as server-sent events ending with "
                                                "`data: [DONE]`.",
                                 "content": {"application/json": {"schema": _ref(ChatCompletion)},
                                             "text/event-stream": {"schema": SSE_EVENT}}}}
    paths["/v1/models"]["get"]["responses"] = _ok(_ref(ModelList), "The routes with an active policy.")
    models_item = paths["/v1/models/{model}"]["get"]
    models_item["responses"] = _ok(_ref(ModelCard), "One route.")
    models_item["parameters"] = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths["/health"]["get"]["responses"] = _ok({"type": "object"}, "Liveness, the store's state and the log "
                                                                     "writer's counters.")
    paths["/metrics"]["get"]["responses"] = {"200": {"description": "Prometheus metrics.",
                                                     "content": {"text/plain": {"schema": {"type": "string"}}}}}
    for (path, method), statuses in ENDPOINT_ERRORS.items():
        operation = paths[path][method]
        if 401 in statuses:
            operation["security"] = [{"apiKey": []}, {}]
        for status in statuses:
            operation["responses"][str(status)] = {
                "description": ERROR_MEANINGS[status],
                "content": {"application/json": {"schema": _ref(ErrorResponse)}}}
    return document


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}
