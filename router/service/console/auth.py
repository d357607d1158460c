"""Who is using the console: password logins (argon2 hashes), sessions, bearer tokens,
CSRF tokens and the login rate limit. No hand-rolled cryptography: argon2-cffi hashes and
verifies passwords, `secrets` makes tokens, `hmac.compare_digest` compares them."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from router.core.console_config import ConsoleConfig, Role
from router.service.api_auth import read_token
from router.service.console.login_limit import LoginFailures

_HASHER = PasswordHasher()
# Verified when the user name is unknown, so that a wrong name costs as long as a wrong
# password: the time of an answer does not tell which names exist.
_DUMMY = _HASHER.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


@dataclass
class Session:
    user: str
    role: Role
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))


@dataclass(frozen=True)
class Identity:
    user: str
    role: Role
    csrf: str | None  # None: a bearer token (no cookie, so no cross-site risk)

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


class ConsoleAuth:
    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.users = {u.username: u for u in config.users}
        self.sessions: dict[str, Session] = {}
        self.failures = LoginFailures(config.login_failures, config.login_window)
        self.lock = threading.Lock()

    # --- logins ----------------------------------------------------------------------------

    def blocked(self, address: str, now: float | None = None) -> bool:
        """Too many failed logins from this address lately."""
        return self.failures.blocked(address, now)

    def login(self, username: str, password: str, address: str) -> str | None:
        """A new session's id, or None (the failure is counted against the address);
        TooManyFailures when the address is past its limit (the password is not checked)."""
        # Counted as a failure before the (slow) check and taken back on success: a check
        # and a count apart would let parallel attempts all pass the limit.
        stamp = self.failures.count(address)
        user = self.users.get(username)
        try:
            _HASHER.verify(user.password_hash if user else _DUMMY, password)
            ok = user is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None:
            return None
        session_id = secrets.token_urlsafe(32)
        expires = time.monotonic() + self.config.session_minutes * 60
        self.failures.forgive(address, stamp)
        with self.lock:
            self._expire()
            self.sessions[session_id] = Session(user.username, user.role, expires)
        return session_id

    def logout(self, session_id: str) -> None:
        with self.lock:
            self.sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[key]

    # --- requests --------------------------------------------------------------------------

    def identify(self, session_id: str | None, authorization: str) -> Identity | None:
        """The session's or the bearer token's identity, or None (log in first)."""
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and given and self.config.token_file is not None:
            try:
                token = read_token(self.config.token_file)
            except OSError:
                return None
            if token and hmac.compare_digest(given.strip().encode(), token.encode()):
                return Identity("token", self.config.token_role, None)
            return None
        if not session_id:
            return None
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None or session.expires <= time.monotonic():
                self.sessions.pop(session_id, None)
                return None
            return Identity(session.user, session.role, session.csrf)

    @staticmethod
    def csrf_ok(identity: Identity, given: str | None) -> bool:
        if identity.csrf is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), identity.csrf.encode())
