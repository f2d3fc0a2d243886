"""The read-only dashboard (HTML): log in with an API key of scope ``read`` or higher, then the fleet
overview and each model's lineage. Nothing here writes anything but the login session.

The session cookie is opaque (:mod:`tinymlops.server.dashboard.sessions`), HttpOnly and
SameSite=Strict; every page re-checks the key behind it. Pages are sent with a Content-Security-Policy
that allows no scripts at all, on top of escaping every value (:mod:`tinymlops.server.dashboard.pages`).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tinymlops.access.scopes import Scope
from tinymlops.errors import AccessDeniedError, AuthenticationError, NotFoundError
from tinymlops.registry.refs import NAME
from tinymlops.server.dashboard import pages, views
from tinymlops.server.dashboard.sessions import COOKIE_NAME, DashboardSession, SessionStore
from tinymlops.server.deps import Services, ServicesDep

router = APIRouter(prefix=pages.BASE, include_in_schema=False)

LOGIN = f"{pages.BASE}/login"
MAX_LOGIN_BODY = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ModelName = Annotated[str, Path(pattern=NAME.pattern)]


def _store(request: Request) -> SessionStore:
    store: SessionStore | None = getattr(request.app.state, "dashboard_sessions", None)
    if store is None:
        store = request.app.state.dashboard_sessions = SessionStore()
    return store


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _to_login() -> RedirectResponse:
    return RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)


def _session(request: Request, services: Services) -> DashboardSession | None:
    """The caller's live session, if its API key is still valid (a revoked key ends the session)."""
    store = _store(request)
    token = request.cookies.get(COOKIE_NAME)
    session = store.get(token)
    if session is None:
        return None
    try:
        key = services.api_keys.get(session.key_id)
    except NotFoundError:
        key = None
    if key is None or not key.active or not key.scope.allows(Scope.READ):
        store.end(token)
        return None
    return session


def _who(session: DashboardSession) -> str:
    return f"{session.key_name} ({session.scope})"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, services: ServicesDep) -> Response:
    if _session(request, services) is not None:
        return RedirectResponse(pages.BASE, status_code=303, headers=SECURITY_HEADERS)
    return _html(pages.login_page())


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    services: Services = request.app.state.services
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _html(pages.login_page("the login form must be sent as application/x-www-form-urlencoded"), 415)
    body = await request.body()
    if len(body) > MAX_LOGIN_BODY:
        return _html(pages.login_page(f"the login form is larger than {MAX_LOGIN_BODY} bytes"), 413)
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=4, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return _html(pages.login_page("the login form is not valid UTF-8 form data"), 400)
    keys = fields.get("api_key", [])
    if len(keys) != 1 or not keys[0].strip():
        return _html(pages.login_page("enter an API key"), 400)
    try:
        record = services.api_keys.authenticate(keys[0].strip(), Scope.READ)
    except AccessDeniedError as exc:
        return _html(pages.login_page(f"refused: {exc}"), 403)
    except (AuthenticationError, NotFoundError) as exc:
        return _html(pages.login_page(f"refused: {exc}"), 401)
    token = _store(request).create(record.id, record.name, str(record.scope))
    response = RedirectResponse(pages.BASE, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE_NAME,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=pages.BASE,
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    _store(request).end(request.cookies.get(COOKIE_NAME))
    response = _to_login()
    response.delete_cookie(COOKIE_NAME, path=pages.BASE, httponly=True, samesite="strict")
    return response


@router.get("", response_class=HTMLResponse)
def fleet(request: Request, services: ServicesDep) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    view = views.fleet_overview(services.workspace, services.devices, services.releases)
    return _html(pages.fleet_page(view, _who(session)))


@router.get("/models/{name}", response_class=HTMLResponse)
def model(name: ModelName, request: Request, services: ServicesDep) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    try:
        view = views.model_lineage(services.workspace, name)
    except NotFoundError as exc:
        return _html(pages.error_page(404, str(exc), _who(session)), 404)
    return _html(pages.lineage_page(view, _who(session)))


_CSS = files("tinymlops.server.dashboard").joinpath("static/dashboard.css")


@router.get("/static/dashboard.css")
def stylesheet() -> Response:
    return Response(
        _CSS.read_bytes(),
        media_type="text/css",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"},
    )


__all__ = ["router"]
