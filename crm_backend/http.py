"""The one place that turns failures into JSON HTTP errors."""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from crm_backend.errors import (
    CrmError,
    InvalidInput,
    InvalidTransition,
    LookupThrottled,
    MalformedRequest,
    NotFound,
    describe_error,
)
from crm_backend.validation import clean_text

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATUS_FOR_CRM_ERROR: dict[type[CrmError], int] = {
    MalformedRequest: 400,
    NotFound: 404,
    InvalidInput: 422,
    InvalidTransition: 409,
    LookupThrottled: 429,
}


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with Chinese left readable (UTF-8, not \\u escapes)."""
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


_dumps = functools.partial(json.dumps, ensure_ascii=False)


def json_error(status: int, code: str, message: str) -> web.Response:
    """A JSON error body: ``{"error": code, "message": ...}``."""
    return json_response({"error": code, "message": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors and HTTP errors become JSON; anything unexpected a logged 500 without details."""
    try:
        return await handler(request)
    except CrmError as error:
        status = next((s for cls, s in _STATUS_FOR_CRM_ERROR.items() if isinstance(error, cls)), 400)
        return json_error(status, error.code, str(error))
    except web.HTTPException as error:
        if error.content_type == "application/json" or error.status < 400:
            raise
        return json_error(error.status, error.reason.lower().replace(" ", "_"), error.reason)
    except Exception as error:
        logger.error("unhandled error on %s %s: %s", request.method, request.path, describe_error(error))
        return json_error(500, "internal_error", "internal error")


def require_bearer(request: web.Request, token: str) -> None:
    """Refuse the request unless it carries ``Authorization: Bearer <token>``.

    Raises:
        web.HTTPUnauthorized: with a JSON body.
    """
    supplied = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(supplied, f"Bearer {token}".encode()):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized", "message": "missing or wrong bearer token"}),
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object.

    Control characters are dropped from every string in it (`clean_text`).

    Raises:
        MalformedRequest: if the body is not UTF-8 JSON or not an object.
    """
    raw = await request.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise MalformedRequest("body must be UTF-8 JSON") from error
    if not isinstance(data, dict):
        raise MalformedRequest("body must be a JSON object")
    return _cleaned(data)


def _cleaned(value: Any) -> Any:
    """A parsed JSON value with every string (keys too) passed through `clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _cleaned(item) for key, item in value.items()}
    return value
