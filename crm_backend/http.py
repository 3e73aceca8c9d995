"""The HTTP boundary: the one place that turns failures into JSON errors, and who is asking."""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from aiohttp import web

from crm_backend.errors import (
    CrmError,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    LookupThrottled,
    MalformedRequest,
    NotFound,
    RateLimited,
    Unauthenticated,
    describe_error,
)
from crm_backend.settings import Network
from crm_backend.validation import clean_text

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The reverse proxies whose X-Forwarded-For is believed (`Settings.trusted_proxies`); unset: none.
trusted_proxies_key = web.AppKey("trusted_proxies", tuple[Network, ...])
MAX_ADDRESS_CHARS = 64  # the audit log's and the sign-in throttle's column width
MAX_FORWARDED_HOPS = 32  # a longer chain is not from any proxy set-up we trust
_STATUS_FOR_CRM_ERROR: dict[type[CrmError], int] = {
    MalformedRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    InvalidInput: 422,
    InvalidTransition: 409,
    LookupThrottled: 429,
    RateLimited: 429,
}


def status_for(error: CrmError) -> int:
    """The HTTP status a domain error answers with (400 for one the table does not name)."""
    return next((s for cls, s in _STATUS_FOR_CRM_ERROR.items() if isinstance(error, cls)), 400)


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
        status = status_for(error)
        response = json_error(status, error.code, str(error))
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
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


def client_address(request: web.Request) -> str:
    """The address of whoever sent the request, for throttling and the audit log.

    The TCP peer, unless the peer is one of the trusted reverse proxies: then the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy, i.e. the
    address the outermost trusted proxy saw. Entries left of it were written by the
    client and are ignored, so a client cannot choose its address. A malformed entry
    stops the walk at the nearest hop that is trusted.
    """
    peer = request.remote or ""
    trusted = request.config_dict.get(trusted_proxies_key, ())
    current = _parse_ip(peer)
    if current is None or not _is_trusted(current, trusted):
        return peer[:MAX_ADDRESS_CHARS]
    entries = [part.strip() for header in request.headers.getall("X-Forwarded-For", ()) for part in header.split(",")]
    for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
        hop = _parse_ip(entry)
        if hop is None:
            break
        current = hop
        if not _is_trusted(hop, trusted):
            break
    return str(current)[:MAX_ADDRESS_CHARS]


def _parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    """An address as a proxy writes it: bare, ``[v6]:port`` or ``v4:port``; IPv4-mapped IPv6 as IPv4."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPv4Address | IPv6Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def _cleaned(value: Any) -> Any:
    """A parsed JSON value with every string (keys too) passed through `clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _cleaned(item) for key, item in value.items()}
    return value
