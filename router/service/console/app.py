"""The console's front door: static files, login and logout, and for every other page who
is asking (session or bearer token), whether a POST carries the session's CSRF token and
whether the role may act. A request that fails any of these changes nothing."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from router.audit.operator import record_action
from router.audit.trail import AuditTrail
from router.core.config import RouterConfig
from router.service.console import views_letters, views_overview, views_rules
from router.service.console.auth import ConsoleAuth, Identity
from router.service.console.flash import Flashes
from router.service.console.forms import FormError, Posted, cookie, parse_form, set_cookie
from router.service.console.history import History
from router.service.console.html import button, field, page
from router.service.console.login_limit import TooManyFailures
from router.service.control_api import ControlApi
from router.service.http_types import Request, Response
from router.service.metric_samples import Samples

log = logging.getLogger(__name__)

SESSION = "dr_session"
LOGIN_NONCE = "dr_login"  # double-submit token of the login form (no session yet)
STATIC = {"console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
# Only its own scripts and styles, never inside another site's frame.
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"))
# Served over HTTPS (its own port with tls_cert): browsers keep to HTTPS for a year.
HSTS = (("Strict-Transport-Security", "max-age=31536000"),)
# POSTs that change nothing: a viewer may send them (with the CSRF token all the same).
TESTER = "/console/rules/test"
VIEWER_POSTS = ("/console/logout", TESTER)
# One rule-tester upload at a time: each holds a thread and up to UPLOAD_MAX on disk.
TESTER_BUSY = Response(503, b"refused: another rule test is uploading; try again in a moment\n",
                       "text/plain; charset=utf-8", (("Retry-After", "5"),))


def redirect(location: str, *headers: tuple[str, str]) -> Response:
    return Response(303, b"", "text/plain", (("Location", location), *headers))




class Console:
    def __init__(self, config: Callable[[], RouterConfig], api: ControlApi,
                 status: Callable[[], dict[str, Any]], samples: Callable[[], Samples],
                 audit: AuditTrail | None) -> None:
        self.config, self.api, self.status, self.audit = config, api, status, audit
        self.settings = config().console
        self.auth = ConsoleAuth(self.settings)
        self.secure = self.settings.tls_cert is not None
        self.samples = samples
        self.history = History(samples, lambda: int(
            self.status().get("broker", {}).get("jobs_queued", 0)))
        self.tester = threading.Lock()
        self.flashes = Flashes()

    def _back(self, location: str, identity: Identity, message: str) -> Response:
        """To the page the action came from, which shows `message` (flash.py)."""
        sep = "&" if "?" in location else "?"
        return redirect(f"{location}{sep}msg={self.flashes.add(identity.user, message)}")

    def __call__(self, request: Request) -> Response | None:
        if request.path != "/console" and not request.path.startswith("/console/"):
            return None
        response = self._serve(request)
        headers = (*response.headers, *SECURITY_HEADERS, *(HSTS if self.secure else ()))
        return dataclasses.replace(response, headers=headers)

    def body_limit(self, head: Request) -> int | None:
        """More than the port's small limit for the rule tester's upload only, and only for
        a logged-in user: nobody else can make the server hold a large body."""
        if head.method != "POST" or head.path != TESTER:
            return None
        who = self.auth.identify(cookie(head, SESSION), head.headers.get("authorization", ""))
        return views_rules.UPLOAD_MAX if who is not None else None

    def head_answer(self, head: Request) -> Response | None:
        """401 for a POST that needs a login and has none, from its head alone: sent instead
        of `100 Continue`, so that its body never comes (http_types.py)."""
        open_paths = head.path == "/console/login" or head.path.startswith("/console/static/")
        if head.method != "POST" or not head.path.startswith("/console/") or open_paths:
            return None
        if self.auth.identify(cookie(head, SESSION), head.headers.get("authorization", "")):
            return TESTER_BUSY if head.path == TESTER and self.tester.locked() else None
        return Response(401, b"log in first\n", "text/plain; charset=utf-8", SECURITY_HEADERS)

    def _serve(self, request: Request) -> Response:
        path = request.path
        if path == "/console":
            return redirect("/console/")
        if path.startswith("/console/static/"):
            return self._static(path.removeprefix("/console/static/"))
        if path == "/console/login":
            return self._login(request)
        identity = self.auth.identify(cookie(request, SESSION),
                                      request.headers.get("authorization", ""))
        if identity is None:
            if request.method == "GET" and not path.endswith(".json"):
                return redirect("/console/login")
            return Response(401, b"log in first\n", "text/plain; charset=utf-8")
        if request.method != "POST":
            return self._get(request, identity)
        if path != TESTER:
            return self._posted(request, identity)
        if not self.tester.acquire(blocking=False):
            return TESTER_BUSY
        try:
            return self._posted(request, identity)
        finally:
            self.tester.release()

    def _posted(self, request: Request, identity: Identity) -> Response:
        try:
            with parse_form(request) as posted:
                refusal = self._refusal(request, identity, posted)
                return refusal or self._post(request, identity, posted)
        except FormError as exc:
            return Response(exc.status, f"refused: {exc}\n".encode(),
                            "text/plain; charset=utf-8")

    # --- security --------------------------------------------------------------------------

    def _refusal(self, request: Request, identity: Identity, posted: Posted
                 ) -> Response | None:
        given = posted.fields.get("csrf") or request.headers.get("x-csrf-token")
        if not self.auth.csrf_ok(identity, given):
            self._audit(identity.user, request, "console POST", "refused: no or wrong CSRF "
                        "token", ok=False, refused_access=True)
            return Response(403, b"refused: the form's CSRF token is missing or wrong; "
                                 b"reload the page\n", "text/plain; charset=utf-8")
        if request.path not in VIEWER_POSTS and not identity.can_act:
            self._audit(identity.user, request, f"console POST {request.path}",
                        f"refused: role {identity.role} may not act", ok=False,
                        refused_access=True)
            return Response(403, f"refused: {identity.user} is a {identity.role}; acting "
                                 "needs the operator role\n".encode(),
                            "text/plain; charset=utf-8")
        return None

    def _audit(self, user: str, request: Request, action: str, detail: str, *, ok: bool,
               refused_access: bool = False) -> None:
        log.log(logging.INFO if ok else logging.WARNING, "console: %s from %s: %s: %s",
                user, request.client, action, detail)
        record_action(self.audit, user=f"console:{user}", address=request.client,
                      action=action, detail=detail, ok=ok, refused_access=refused_access)

    # --- login -----------------------------------------------------------------------------

    def _login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_page("")
        try:
            with parse_form(request) as posted:  # a login has no files: nothing to keep
                pass
        except FormError as exc:
            return self._login_page(str(exc), exc.status)
        nonce = cookie(request, LOGIN_NONCE)
        if not nonce or posted.fields.get("csrf") != nonce:
            return self._login_page("the login form expired; try again", 403)
        user = posted.fields.get("username", "")[:64]
        try:
            session = self.auth.login(user, posted.fields.get("password", ""), request.client)
        except TooManyFailures:
            self._audit(user or "?", request, "console login", "refused: too many failed "
                        "logins from this address", ok=False, refused_access=True)
            return self._login_page("too many failed logins from this address; wait and "
                                    "try again", 429)
        if session is None:
            self._audit(user or "?", request, "console login", "failed: wrong user name or "
                        "password", ok=False, refused_access=True)
            return self._login_page("wrong user name or password", 401)
        self._audit(user, request, "console login", "logged in", ok=True)
        max_age = int(self.settings.session_minutes * 60)
        return redirect("/console/", set_cookie(SESSION, session, secure=self.secure,
                                                max_age=max_age))

    def _login_page(self, message: str, status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(24)
        inner = (f'<input type="hidden" name="csrf" value="{nonce}">'
                 + field("username", "User") + field("password", "Password", kind="password")
                 + button("Log in"))
        body = f'<form method="post" action="/console/login" class="login">{inner}</form>'
        return Response(status, page("Log in", body, None, message),
                        "text/html; charset=utf-8",
                        (set_cookie(LOGIN_NONCE, nonce, secure=self.secure),))

    # --- pages -----------------------------------------------------------------------------

    def _static(self, name: str) -> Response:
        if name not in STATIC:
            return Response(404, b"not found\n", "text/plain")
        data = resources.files("router.service.console").joinpath("static", name).read_bytes()
        return Response(200, data, STATIC[name])

    def _get(self, request: Request, identity: Identity) -> Response:
        path = request.path.rstrip("/") or "/"
        message = self.flashes.take(identity.user, request.params().get("msg", ""))
        if path == "/console":
            return views_overview.overview(identity, message)
        if path == "/console/overview.json":
            self.history.sample()
            data = views_overview.overview_data(self.status(), self.samples(), self.history)
            return Response(200, json.dumps(data).encode(), "application/json")
        if path == "/console/destinations":
            return views_overview.destinations(identity, self.status(), self._names(),
                                               message)
        if path == "/console/dead-letters":
            return views_letters.listing(identity, self.api.spool, request.params(),
                                         self._names(), message)
        if path.startswith("/console/dead-letters/"):
            return views_letters.detail(identity, self.api.spool,
                                        path.removeprefix("/console/dead-letters/"),
                                        self._names(), message)
        if path == "/console/rules":
            return views_rules.rules(identity, self.config(), message)
        if path == "/console/audit":
            return views_rules.audit(identity, self.config(), self.samples())
        return Response(404, page("Not found", "<p>No such page.</p>", identity),
                        "text/html; charset=utf-8")

    def _names(self) -> list[str]:
        return sorted(self.config().destinations)

    def _post(self, request: Request, identity: Identity, posted: Posted) -> Response:
        path = request.path
        if path == "/console/logout":
            self.auth.logout(cookie(request, SESSION) or "")
            return redirect("/console/login", set_cookie(SESSION, "", secure=self.secure,
                                                         max_age=0))
        if path == TESTER:
            return views_rules.test(identity, self.config(), posted)
        api_path, where = views_overview.api_call(path) or views_letters.api_call(path) \
            or ("", "")
        if not api_path:
            return Response(404, b"no such action\n", "text/plain")
        body: dict[str, Any] = {k: v for k, v in posted.fields.items() if k == "to" and v}
        if posted.fields.get("ids"):
            body["ids"] = posted.fields["ids"].split()
        elif api_path.endswith(("/dead-letters/replay", "/dead-letters/purge")):
            # Never "every dead letter" by accident.
            return self._back(where, identity, "nothing selected")
        call = Request("POST", api_path, "", {"content-type": "application/json"},
                       json.dumps(body).encode(), request.client)
        answer = self.api.route_checked(call, f"console:{identity.user}")
        result = json.loads(answer.body)
        return self._back(where, identity,
                          result.get("detail") or result.get("error") or "done")
