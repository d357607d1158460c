"""A console user without a browser: cookies, the login form's and pages' CSRF tokens."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from argon2 import PasswordHasher

PASSWORDS = {"alice": "operator-pass", "victor": "viewer-pass"}
ROLES = {"alice": "operator", "victor": "viewer"}


def console_users() -> list[dict[str, Any]]:
    hasher = PasswordHasher()
    return [{"username": u, "password_hash": hasher.hash(p), "role": ROLES[u]}
            for u, p in PASSWORDS.items()]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ConsoleClient:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(self, path: str, fields: dict[str, str] | None = None
                ) -> tuple[int, str, dict[str, str]]:
        data = None if fields is None else urllib.parse.urlencode(fields).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as rsp:
                return rsp.status, rsp.read().decode(), dict(rsp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def csrf(self, path: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.request(path)[1])
        assert found, f"no CSRF token on {path}"
        return found[1]

    def login(self, user: str, password: str | None = None) -> int:
        token = self.csrf("/console/login")
        return self.request("/console/login", {"username": user, "csrf": token,
                                               "password": password or PASSWORDS[user]})[0]
