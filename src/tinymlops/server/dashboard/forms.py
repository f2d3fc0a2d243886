"""The dashboard's form posts: read a bounded ``application/x-www-form-urlencoded`` body, and the
CSRF tokens that make a post count.

Two tokens, both random (:func:`new_token`) and compared in constant time (:func:`same_token`):

* the **session token** — made with each login session (:mod:`~tinymlops.server.dashboard.sessions`)
  and sent back as a hidden ``csrf`` field by every form that changes something. SameSite=Strict
  already keeps other sites' posts from carrying the session cookie; the token makes that not the
  only defence (an older browser, a same-site page on another port, a proxy that drops the flag).
* the **login token** — a login form carries it in a hidden field and in a short-lived HttpOnly,
  SameSite=Strict cookie (:data:`LOGIN_COOKIE`); a login post whose two copies differ is refused.
  Another site cannot read or set that cookie, so it cannot log a visitor in under the site's own
  key (login CSRF).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request

FORM_TYPE = "application/x-www-form-urlencoded"
LOGIN_COOKIE = "tinymlops_login"
LOGIN_TOKEN_TTL_S = 3600


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, given: str | None) -> bool:
    """Whether ``given`` is the non-empty ``expected`` token (constant-time comparison)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


@dataclass(frozen=True)
class FormRefusal:
    """Why a form post was not read: the HTTP status and a message for the page."""

    status: int
    message: str


async def read_form(request: Request, *, max_bytes: int, max_fields: int) -> dict[str, list[str]] | FormRefusal:
    """The fields of a form post, or why it cannot be read (415 not a form, 413 too large, 400 not
    UTF-8 or too many fields)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return FormRefusal(415, f"the form must be sent as {FORM_TYPE}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return FormRefusal(413, f"the form is larger than {max_bytes} bytes")
    try:
        return parse_qs(body.decode("utf-8"), max_num_fields=max_fields, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        return FormRefusal(400, "the form is not valid UTF-8 form data")
    except ValueError:
        return FormRefusal(400, f"the form has more than {max_fields} fields")


def field(fields: dict[str, list[str]], name: str) -> str | None:
    """The one value of field ``name`` (None when it is missing or given more than once)."""
    values = fields.get(name, [])
    return values[0] if len(values) == 1 else None


__all__ = [
    "FORM_TYPE",
    "LOGIN_COOKIE",
    "LOGIN_TOKEN_TTL_S",
    "FormRefusal",
    "field",
    "new_token",
    "read_form",
    "same_token",
]
