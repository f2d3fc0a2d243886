"""The web dashboard (HTML): log in with an API key of scope ``read`` or higher, then the fleet
overview, each model's lineage, the releases and their rollouts, latency per device class, the
fleet's telemetry per device class (``/dashboard/telemetry``), each model's drift
(``/dashboard/drift``, ``/dashboard/models/{name}/drift``) and the prepaid licenses with what
reconciliation of the usage reports flagged (``/dashboard/licenses``, ``/dashboard/licenses/{id}``).
Read-only pages need a login; nothing is writable without the ``admin`` scope.

The session cookie is opaque (:mod:`tinymlops.server.dashboard.sessions`), HttpOnly and
SameSite=Strict; every page re-checks the key behind it (its current scope, not the one it logged in
with). Pages are sent with a Content-Security-Policy that allows no scripts at all, on top of
escaping every value (:mod:`tinymlops.server.dashboard.pages`).

The only writes besides the session are the rollout actions on a release page
(``POST /dashboard/releases/{id}/rollout/{promote|pause|resume|rollback}``) and the license actions
(``POST /dashboard/licenses/{id}/{top-up|revoke}``): the session's key must have scope ``admin``
(else 403) and the form must carry the session's CSRF token (else 403, nothing changes); a rollout
action is recorded with actor ``dashboard:api-key:<key id>``; then the browser is redirected back to
the release or to the license (POST/redirect/GET; a top-up to the new license). An action the
state does not allow shows the service's message on the page (409); a bad field (400) too. The login
form carries a login token too (:mod:`tinymlops.server.dashboard.forms`).
"""

from __future__ import annotations

import dataclasses
import re
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tinymlops.access.scopes import Scope
from tinymlops.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UsageError,
)
from tinymlops.registry.refs import NAME
from tinymlops.server.dashboard import (
    forms,
    pages,
    pages_drift,
    pages_licenses,
    pages_release,
    views,
    views_drift,
    views_licenses,
    views_release,
)
from tinymlops.server.dashboard.sessions import COOKIE_NAME, DashboardSession, SessionStore
from tinymlops.server.deps import Services, ServicesDep
from tinymlops.spec.license import MAX_QUERIES, MAX_REASON_CHARS

router = APIRouter(prefix=pages.BASE, include_in_schema=False)

LOGIN = f"{pages.BASE}/login"
MAX_LOGIN_BODY = 4096
MAX_ACTION_BODY = 16 * 1024
MAX_REASON = 1000
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ModelName = Annotated[str, Path(pattern=NAME.pattern)]
RELEASE_ID = re.compile(r"^[0-9a-f]{16}$")
LICENSE_ID = re.compile(r"^[0-9a-f]{32}$")
#: a whole number as a form field holds it (ASCII digits only: ``str.isdigit`` admits '²')
WHOLE = re.compile(r"^[0-9]{1,15}$")


def _store(request: Request) -> SessionStore:
    store: SessionStore | None = getattr(request.app.state, "dashboard_sessions", None)
    if store is None:
        store = request.app.state.dashboard_sessions = SessionStore()
    return store


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def _to_login() -> RedirectResponse:
    return _redirect(LOGIN)


def _session(request: Request, services: Services) -> DashboardSession | None:
    """The caller's live session, if its API key is still valid (a revoked key ends the session),
    with the key's current scope."""
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
    return dataclasses.replace(session, scope=str(key.scope))


def _is_admin(session: DashboardSession) -> bool:
    return Scope.parse(session.scope).allows(Scope.ADMIN)


def _who(session: DashboardSession) -> str:
    return f"{session.key_name} ({session.scope})"


# --- login ----------------------------------------------------------------------------------------
def _login_form(message: str | None = None, status: int = 200) -> Response:
    """The login page with a fresh login token (in the form and in its cookie)."""
    token = forms.new_token()
    response = _html(pages.login_page(token, message), status)
    response.set_cookie(
        forms.LOGIN_COOKIE,
        token,
        max_age=forms.LOGIN_TOKEN_TTL_S,
        httponly=True,
        samesite="strict",
        path=f"{pages.BASE}/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, services: ServicesDep) -> Response:
    if _session(request, services) is not None:
        return _redirect(pages.BASE)
    return _login_form()


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await forms.read_form(request, max_bytes=MAX_LOGIN_BODY, max_fields=4)
    if isinstance(fields, forms.FormRefusal):
        return _login_form(f"the login form was refused: {fields.message}", fields.status)
    key = forms.field(fields, "api_key")
    if key is None or not key.strip():
        return _login_form("enter an API key", 400)
    if not forms.same_token(request.cookies.get(forms.LOGIN_COOKIE), forms.field(fields, "login_token")):
        return _login_form("the login form expired or did not come from this site; log in again", 403)
    try:
        record = await run_in_threadpool(services.api_keys.authenticate, key.strip(), Scope.READ)
    except AccessDeniedError as exc:
        return _login_form(f"refused: {exc}", 403)
    except (AuthenticationError, NotFoundError) as exc:
        return _login_form(f"refused: {exc}", 401)
    token = _store(request).create(record.id, record.name, str(record.scope))
    response = _redirect(pages.BASE)
    response.set_cookie(
        COOKIE_NAME,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=pages.BASE,
    )
    response.delete_cookie(forms.LOGIN_COOKIE, path=f"{pages.BASE}/login", httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    _store(request).end(request.cookies.get(COOKIE_NAME))
    response = _to_login()
    response.delete_cookie(COOKIE_NAME, path=pages.BASE, httponly=True, samesite="strict")
    return response


# --- read-only pages ------------------------------------------------------------------------------
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


@router.get("/releases", response_class=HTMLResponse)
def releases(request: Request, services: ServicesDep) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    return _html(pages_release.releases_page(views_release.release_list(services.releases), _who(session)))


def _release_page(
    services: Services, session: DashboardSession, release_id: str, *, error: str | None = None, status: int = 200
) -> Response:
    if not RELEASE_ID.match(release_id):
        return _html(pages.error_page(404, "a release id is 16 lower-case hex digits", _who(session)), 404)
    try:
        detail = views_release.release_detail(services.releases, release_id)
    except NotFoundError as exc:
        return _html(pages.error_page(404, str(exc), _who(session)), 404)
    csrf = session.csrf if _is_admin(session) else None
    return _html(pages_release.release_page(detail, _who(session), csrf=csrf, error=error), status)


@router.get("/releases/{release_id}", response_class=HTMLResponse)
def release(release_id: str, request: Request, services: ServicesDep) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    return _release_page(services, session, release_id)


@router.get("/latency", response_class=HTMLResponse)
def latency(request: Request, services: ServicesDep, window: Annotated[str | None, Query()] = None) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    try:
        view = views.latency_by_class(services.releases, window)
    except InvalidInputError as exc:
        return _html(pages.error_page(400, str(exc), _who(session)), 400)
    return _html(pages.latency_page(view, _who(session)))


@router.get("/telemetry", response_class=HTMLResponse)
def telemetry(request: Request, services: ServicesDep, window: Annotated[str | None, Query()] = None) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    try:
        view = views_drift.telemetry_view(services.workspace.engine, window)
    except InvalidInputError as exc:
        return _html(pages.error_page(400, str(exc), _who(session)), 400)
    return _html(pages_drift.telemetry_page(view, _who(session)))


@router.get("/drift", response_class=HTMLResponse)
def drift_index(request: Request, services: ServicesDep) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    models = views_drift.models_with_telemetry(services.workspace.engine)
    return _html(pages_drift.drift_index_page(models, _who(session)))


@router.get("/models/{name}/drift", response_class=HTMLResponse)
def model_drift(
    name: ModelName,
    request: Request,
    services: ServicesDep,
    window: Annotated[str | None, Query(max_length=16)] = None,
    by: Annotated[str | None, Query(max_length=16)] = None,
    version: Annotated[str | None, Query(max_length=12)] = None,
    feature: Annotated[str | None, Query(max_length=views_drift.MAX_FEATURE_CHARS)] = None,
    cohort: Annotated[str | None, Query(max_length=views_drift.MAX_COHORT_CHARS)] = None,
) -> Response:
    """One model's drift (:mod:`~tinymlops.server.dashboard.views_drift`): 400 for a bad query,
    404 for an unknown model, version, cohort or feature; an empty state when there is no
    reference profile or no telemetry in the window."""
    session = _session(request, services)
    if session is None:
        return _to_login()
    who = _who(session)
    try:
        query = views_drift.DriftQuery.parse(window=window, by=by, version=version, feature=feature, cohort=cohort)
        view = views_drift.drift_view(services.workspace, name, query)
    except InvalidInputError as exc:
        return _html(pages.error_page(400, exc.message, who), 400)
    except NotFoundError as exc:
        return _html(pages.error_page(404, exc.message, who), 404)
    return _html(pages_drift.drift_page(view, who))


# --- the one write: rollout actions (admin, CSRF token) -------------------------------------------
@router.post("/releases/{release_id}/rollout/{action}", response_class=HTMLResponse)
async def rollout_action(release_id: str, action: str, request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await forms.read_form(request, max_bytes=MAX_ACTION_BODY, max_fields=8)
    # the database and the repository edit run in the thread pool, as the sync routes do
    return await run_in_threadpool(_rollout_action, services, request, release_id, action, fields)


def _rollout_action(
    services: Services,
    request: Request,
    release_id: str,
    action: str,
    fields: dict[str, list[str]] | forms.FormRefusal,
) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    who = _who(session)
    if not _is_admin(session):
        return _html(pages.error_page(403, f"acting on a rollout needs an API key with scope 'admin'; {who}", who), 403)
    if action not in views_release.ACTIONS or not RELEASE_ID.match(release_id):
        return _html(pages.error_page(404, f"no such rollout action: {action[:40]!r}", who), 404)
    if isinstance(fields, forms.FormRefusal):
        return _html(pages.error_page(fields.status, fields.message, who), fields.status)
    if not forms.same_token(session.csrf, forms.field(fields, "csrf")):
        message = "the form's CSRF token is missing or wrong (reload the release page and try again); nothing changed"
        return _html(pages.error_page(403, message, who), 403)
    reason = (forms.field(fields, "reason") or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        return _release_page(
            services, session, release_id, error=f"the reason is longer than {MAX_REASON} characters", status=400
        )
    act = getattr(services.releases.rollouts, action)
    try:
        act(release_id, actor=f"dashboard:api-key:{session.key_id}", reason=reason)
    except NotFoundError as exc:
        return _html(pages.error_page(404, str(exc), who), 404)
    except ConflictError as exc:  # RolloutTransitionError: not allowed in this state; or a lost race
        return _release_page(services, session, release_id, error=str(exc), status=409)
    return _redirect(pages.release_href(release_id))


# --- licenses: the list, one license, and its two writes (admin, CSRF token) -----------------------
@router.get("/licenses", response_class=HTMLResponse)
def licenses(
    request: Request, services: ServicesDep, show: Annotated[str | None, Query(max_length=16)] = None
) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    who = _who(session)
    if show is not None and show not in views_licenses.SHOW:
        message = f"show must be one of {', '.join(views_licenses.SHOW)}, got {show!r}"
        return _html(pages.error_page(400, message, who), 400)
    view = views_licenses.licenses_view(services.licenses, show=show or "latest")
    return _html(pages_licenses.licenses_page(view, who))


def _license_page(
    services: Services, session: DashboardSession, license_id: str, *, error: str | None = None, status: int = 200
) -> Response:
    if not LICENSE_ID.match(license_id):
        return _html(pages.error_page(404, "a license id is 32 lower-case hex digits", _who(session)), 404)
    try:
        detail = views_licenses.license_detail(services.licenses, license_id)
    except NotFoundError as exc:
        return _html(pages.error_page(404, str(exc), _who(session)), 404)
    csrf = session.csrf if _is_admin(session) else None
    return _html(pages_licenses.license_page(detail, _who(session), csrf=csrf, error=error), status)


@router.get("/licenses/{license_id}", response_class=HTMLResponse)
def license_detail(license_id: str, request: Request, services: ServicesDep) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    return _license_page(services, session, license_id)


@router.post("/licenses/{license_id}/{action}", response_class=HTMLResponse)
async def license_action(license_id: str, action: str, request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await forms.read_form(request, max_bytes=MAX_ACTION_BODY, max_fields=8)
    return await run_in_threadpool(_license_action, services, request, license_id, action, fields)


def _top_up_terms(fields: dict[str, list[str]], now: float) -> tuple[int, int | None] | str:
    """(queries, valid_until or None) from the top-up form, or what is wrong with it."""
    raw = (forms.field(fields, "queries") or "").strip()
    if not WHOLE.match(raw) or not 1 <= int(raw) <= MAX_QUERIES:
        return f"queries must be a whole number from 1 to {MAX_QUERIES}, got {raw[:40]!r}"
    days = (forms.field(fields, "days") or "").strip()
    if not days:
        return int(raw), None
    if not WHOLE.match(days) or not 1 <= int(days) <= pages_licenses.MAX_DAYS:
        return f"days must be a whole number from 1 to {pages_licenses.MAX_DAYS} (or empty), got {days[:40]!r}"
    return int(raw), int(now) + int(days) * 86_400


def _license_action(
    services: Services,
    request: Request,
    license_id: str,
    action: str,
    fields: dict[str, list[str]] | forms.FormRefusal,
) -> Response:
    session = _session(request, services)
    if session is None:
        return _to_login()
    who = _who(session)
    if not _is_admin(session):
        return _html(pages.error_page(403, f"acting on a license needs an API key with scope 'admin'; {who}", who), 403)
    if action not in ("top-up", "revoke") or not LICENSE_ID.match(license_id):
        return _html(pages.error_page(404, f"no such license action: {action[:40]!r}", who), 404)
    if isinstance(fields, forms.FormRefusal):
        return _html(pages.error_page(fields.status, fields.message, who), fields.status)
    if not forms.same_token(session.csrf, forms.field(fields, "csrf")):
        message = "the form's CSRF token is missing or wrong (reload the license page and try again); nothing changed"
        return _html(pages.error_page(403, message, who), 403)
    try:
        if action == "revoke":
            reason = (forms.field(fields, "reason") or "").strip()
            if not reason or len(reason) > MAX_REASON_CHARS:
                message = f"give a reason of 1 to {MAX_REASON_CHARS} characters"
                return _license_page(services, session, license_id, error=message, status=400)
            services.licenses.revoke(license_id, reason=reason)
            return _redirect(pages_licenses.license_href(license_id))
        terms = _top_up_terms(fields, services.clock())
        if isinstance(terms, str):
            return _license_page(services, session, license_id, error=terms, status=400)
        queries, until = terms
        topped = services.licenses.top_up(license_id, queries=queries, valid_until=until)
    except NotFoundError as exc:
        return _html(pages.error_page(404, str(exc), who), 404)
    except ConflictError as exc:  # not the chain's latest, a race, a device no longer active
        return _license_page(services, session, license_id, error=str(exc), status=409)
    except UsageError as exc:  # e.g. an end the service refuses
        return _license_page(services, session, license_id, error=str(exc), status=400)
    return _redirect(pages_licenses.license_href(topped.license_id))


_CSS = files("tinymlops.server.dashboard").joinpath("static/dashboard.css")


@router.get("/static/dashboard.css")
def stylesheet() -> Response:
    return Response(
        _CSS.read_bytes(),
        media_type="text/css",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"},
    )


__all__ = ["router"]
