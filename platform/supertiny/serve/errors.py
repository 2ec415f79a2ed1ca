"""OpenAI-style error bodies (``{"error": {"message", "type", "param", "code"}}``) for every failure."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from supertiny.errors import InvalidInputError, NotFoundError, SupertinyError
from supertiny.schema.openai import ErrorResponse

log = logging.getLogger("supertiny.serve")


class RouteNotFoundError(NotFoundError):
    """The request's ``model`` names no route with an active policy."""

    code = "model_not_found"


class RequestFieldError(InvalidInputError):
    """A request field is missing, of the wrong type or out of range; ``code`` says which kind of problem
    (OpenAI's codes where one exists)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


# the code of an error that names no more precise one
DEFAULT_CODES = {400: "invalid_request", 404: "not_found", 500: "server_error", 502: "upstream_error",
                 503: "unavailable", 504: "timeout"}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and the JSON body of an error."""
    if isinstance(exc, SupertinyError):
        status = exc.http_status
        body = ErrorResponse.of(str(exc), exc.error_type, param=getattr(exc, "param", None),
                                code=getattr(exc, "code", None) or DEFAULT_CODES.get(status))
        return status, body.model_dump()
    return 500, ErrorResponse.of("internal server error", "server_error", code="server_error").model_dump()


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def _status_type(status: int) -> str:
    if status == 401:
        return "invalid_request_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def validation_error(errors: list[dict[str, Any]]) -> RequestFieldError:
    """The first pydantic/FastAPI validation error as one field error (``param`` is its dotted path)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = f"missing required parameter {param!r}"
    elif param:
        message = f"invalid value for {param!r}: {message}"
    more = len(errors) - 1
    if more > 0:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return RequestFieldError(message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can meet answers with an OpenAI-style body."""

    @app.exception_handler(SupertinyError)
    async def _supertiny(_request: Request, exc: SupertinyError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "no such endpoint (this server has /v1/chat/completions, /v1/models, /health, /metrics)"
        body = ErrorResponse.of(message, _status_type(exc.status_code), code=None).model_dump()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(exc)
