"""router/console: settings, logins, sessions, CSRF, the login limit, forms, secret masking."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from router.core.console_config import ConsoleConfig
from router.service.console.auth import ConsoleAuth, hash_password
from router.service.console.forms import parse_form
from router.service.console.views_rules import masked
from router.service.http_types import Request


def settings(**kwargs: object) -> ConsoleConfig:
    users = [{"username": "alice", "password_hash": hash_password("pw-a"), "role": "operator"},
             {"username": "victor", "password_hash": hash_password("pw-v")}]
    return ConsoleConfig.model_validate({"enabled": True, "users": users, **kwargs})


def test_login_gives_a_session_with_its_role_and_csrf_token() -> None:
    auth = ConsoleAuth(settings())
    session = auth.login("alice", "pw-a", "10.0.0.1")
    assert session is not None
    who = auth.identify(session, "")
    assert who is not None and who.role == "operator" and who.can_act and who.csrf
    assert auth.csrf_ok(who, who.csrf) and not auth.csrf_ok(who, None)
    assert not auth.csrf_ok(who, "forged")
    viewer = auth.identify(auth.login("victor", "pw-v", "10.0.0.1"), "")
    assert viewer is not None and not viewer.can_act
    auth.logout(session)
    assert auth.identify(session, "") is None


def test_failed_logins_are_limited_per_address() -> None:
    auth = ConsoleAuth(settings(login_failures=2, login_window=60))
    assert auth.login("alice", "nope", "10.0.0.9") is None
    assert auth.login("nobody", "pw-a", "10.0.0.9") is None
    assert auth.blocked("10.0.0.9") and not auth.blocked("10.0.0.8")
    assert not auth.blocked("10.0.0.9", time.monotonic() + 61)


def test_sessions_expire() -> None:
    auth = ConsoleAuth(settings(session_minutes=0.001))
    session = auth.login("alice", "pw-a", "::1")
    time.sleep(0.1)
    assert auth.identify(session, "") is None


def test_bearer_token_from_a_file(tmp_path: object) -> None:
    from pathlib import Path

    token = Path(str(tmp_path)) / "token"
    token.write_text("t0ken\n")
    auth = ConsoleAuth(settings(token_file=str(token), token_role="operator"))
    who = auth.identify(None, "Bearer t0ken")
    assert who is not None and who.can_act and who.csrf is None
    assert auth.identify(None, "Bearer wrong") is None


@pytest.mark.parametrize(("extra", "problem"), [
    ({"users": []}, "needs users"),
    ({"tls_cert": "/x.crt"}, "go together"),
    ({"tls_cert": "/x.crt", "tls_key": "/x.key"}, "own port"),
])
def test_settings_are_checked(extra: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        settings(**extra)


def test_plain_passwords_are_not_hashes() -> None:
    with pytest.raises(ValidationError, match="password_hash"):
        ConsoleConfig.model_validate({"users": [{"username": "a", "password_hash": "secret"}]})


def test_multipart_upload_is_parsed() -> None:
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.dcm\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n\x00\x01DICM\r\n--XX--\r\n")
    request = Request("POST", "/console/rules/test", "",
                      {"content-type": "multipart/form-data; boundary=XX"}, body, "::1")
    with parse_form(request) as posted:
        assert posted.fields == {"csrf": "abc"}
        filename, path = posted.files["file"]
        assert filename == "a.dcm" and path.read_bytes() == b"\x00\x01DICM"
    assert not path.exists()  # the upload's folder goes with the form


def test_an_upload_is_parsed_in_small_blocks() -> None:
    """A 20 MB upload costs the parser a block or two of memory, not copies of the body
    (email's parser took about ten times the file)."""
    import tracemalloc

    content = bytes(range(256)) * (20 * 4096)
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nt\r\n"
            b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
            b"\r\n" + content + b"\r\n--b0undary--\r\n")
    request = Request("POST", "/console/rules/test", "",
                      {"content-type": 'multipart/form-data; boundary="b0undary"'}, body, "::1")
    tracemalloc.start()
    try:
        with parse_form(request) as posted:
            peak = tracemalloc.get_traced_memory()[1]
            assert posted.files["file"][1].read_bytes() == content
    finally:
        tracemalloc.stop()
    assert posted.fields == {"csrf": "t"}
    assert peak < 1024**2, peak


@pytest.mark.parametrize(("body", "problem"), [
    (b"no boundary here", "does not hold its boundary"),
    (b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue", "ends before"),
    (b"--XX\r\nContent-Disposition: form-data; name=\"a\"", "inside a part's headers"),
])
def test_a_broken_multipart_body_is_a_clear_error(body: bytes, problem: str) -> None:
    from router.service.console.forms import FormError

    request = Request("POST", "/console/rules/test", "",
                      {"content-type": "multipart/form-data; boundary=XX"}, body, "::1")
    with pytest.raises(FormError, match=problem):
        parse_form(request)


def test_a_second_upload_is_refused_while_one_is_read() -> None:
    """One rule-tester upload at a time: a second gets 503, from its head and from its body,
    and the next after the first is served."""
    import threading

    from router.service.console.app import Console

    console = make_console()
    assert isinstance(console, Console)
    session = console.auth.login("victor", "pw-v", "127.0.0.1")
    who = console.auth.identify(session, "")
    assert who is not None
    reading, go_on = threading.Event(), threading.Event()
    body = (f"--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{who.csrf}\r\n"
            "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
            "not DICOM\r\n--XX--\r\n").encode()

    class Slow:
        def __init__(self) -> None:
            self.rest = body

        def read(self, size: int, /) -> bytes:
            reading.set()
            go_on.wait(10)
            data, self.rest = self.rest[:size], self.rest[size:]
            return data

    headers = {"content-type": "multipart/form-data; boundary=XX",
               "cookie": f"dr_session={session}"}
    first = Request("POST", "/console/rules/test", "", headers, b"", "127.0.0.1", Slow())
    answers = []
    thread = threading.Thread(target=lambda: answers.append(console(first)))
    thread.start()
    try:
        assert reading.wait(10)
        second = Request("POST", "/console/rules/test", "", headers, body, "127.0.0.1")
        refused = console(second)
        assert refused is not None and refused.status == 503
        assert b"another rule test" in refused.body
        early = console.head_answer(head("/console/rules/test", **headers))
        assert early is not None and early.status == 503
    finally:
        go_on.set()
        thread.join(10)
    assert answers[0] is not None and answers[0].status == 200
    assert b"cannot be read as DICOM" in answers[0].body
    third = console(Request("POST", "/console/rules/test", "", headers, body, "127.0.0.1"))
    assert third is not None and third.status == 200


@pytest.mark.parametrize("header", [
    "theme=dark mode; dr_session=s3ss; dr_login=n0nce",
    "tracker; dr_session=s3ss; dr_login=n0nce",  # a nameless cookie
    '=x; dr_session="s3ss"; other="a;b; dr_login=n0nce',
    "dr_session = s3ss ;dr_login=n0nce; dr_session=later",  # the first one wins
    'pref={"a": [1, 2]}; dr_session=s3ss; dr_login="n0nce"',
])
def test_other_cookies_never_hide_the_console_s(header: str) -> None:
    from router.service.console.forms import cookie

    request = Request("GET", "/console/", "", {"cookie": header}, b"", "::1")
    assert cookie(request, "dr_session") == "s3ss"
    assert cookie(request, "dr_login") == "n0nce"
    assert cookie(request, "missing") is None


def test_secrets_are_masked_but_references_stay() -> None:
    data = {"console": {"users": [{"username": "a", "password_hash": "$argon2id$x"}],
                        "token_file": "/etc/t"},
            "listen": {"tls": {"key_password_command": ["vault", "read"],
                               "key_password_env": "KEY_PW"}},
            "destinations": {"web": {"auth": {"password_file": "/run/s", "token": "abc"}}}}
    out = masked(data)
    assert out["console"]["users"][0] == {"username": "a", "password_hash": "***"}
    assert out["console"]["token_file"] == "/etc/t"
    assert out["listen"]["tls"] == {"key_password_command": ["***", "***"],
                                    "key_password_env": "KEY_PW"}
    assert out["destinations"]["web"]["auth"] == {"password_file": "/run/s", "token": "***"}


def make_console(**kwargs: object) -> object:
    from typing import Any, cast

    from router.core.config import default_config
    from router.service.console.app import Console

    config = default_config().model_copy(update={"console": settings(**kwargs)})
    return Console(lambda: config, cast(Any, None), lambda: {}, lambda: cast(Any, []), None)


def head(path: str, **headers: str) -> Request:
    return Request("POST", path, "", headers, b"", "127.0.0.1")


def test_only_a_logged_in_user_may_upload_a_large_file() -> None:
    from router.service.console.app import Console
    from router.service.console.views_rules import UPLOAD_MAX
    from router.service.http_types import MAX_BODY, body_limit

    console = make_console()
    assert isinstance(console, Console)
    session = console.auth.login("victor", "pw-v", "127.0.0.1")
    tester = "/console/rules/test"
    assert body_limit([console], head(tester)) == MAX_BODY
    assert body_limit([console], head(tester, cookie="dr_session=forged")) == MAX_BODY
    assert body_limit([console], head(tester, cookie=f"dr_session={session}")) == UPLOAD_MAX
    assert body_limit([console], head("/console/destinations/pacs/pause",
                                      cookie=f"dr_session={session}")) == MAX_BODY



def test_a_post_that_needs_a_login_is_refused_from_its_head() -> None:
    """What the port answers instead of `100 Continue` (http_endpoint.py): 401 for a POST
    without a session, nothing for the login form or a logged-in user."""
    from router.service.console.app import Console
    from router.service.http_types import head_answer

    console = make_console()
    assert isinstance(console, Console)
    session = console.auth.login("victor", "pw-v", "127.0.0.1")
    refused = head_answer([console], head("/console/rules/test"))
    assert refused is not None and refused.status == 401
    assert ("X-Frame-Options", "DENY") in refused.headers
    assert head_answer([console], head("/console/rules/test",
                                       cookie=f"dr_session={session}")) is None
    assert head_answer([console], head("/console/login")) is None
    assert head_answer([console], head("/api/destinations")) is None

def test_parallel_logins_cannot_pass_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is checked and counted at once: 25 wrong passwords sent together get 5
    password checks, not 25 (each check costs the attacker one guess)."""
    from concurrent.futures import ThreadPoolExecutor

    from router.service.console import auth as auth_module
    from router.service.console.login_limit import TooManyFailures

    auth = ConsoleAuth(settings(login_failures=5, login_window=300))
    checks = []
    real = auth_module._HASHER

    class Slow:
        def verify(self, hashed: str, password: str) -> bool:
            checks.append(password)
            time.sleep(0.05)  # a real argon2 check takes about this long: the race's window
            return real.verify(hashed, password)

    def attempt(_: int) -> str:
        try:
            return "ok" if auth.login("alice", "wrong", "10.0.0.7") else "failed"
        except TooManyFailures:
            return "blocked"

    monkeypatch.setattr(auth_module, "_HASHER", Slow())
    with ThreadPoolExecutor(25) as pool:
        results = list(pool.map(attempt, range(25)))
    assert results.count("failed") == 5 and results.count("blocked") == 20
    assert len(checks) == 5
    assert auth.login("alice", "pw-a", "10.0.0.8") is not None  # other addresses unaffected
    assert "10.0.0.8" not in auth.failures  # a success is not counted



class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fast_failing_logins(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """Every password check fails at once (argon2 takes ~50 ms), on a clock the test moves."""
    from argon2.exceptions import VerificationError

    from router.service.console import auth as auth_module

    real = auth_module._HASHER

    class Refuse:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, hashed: str, password: str) -> bool:
            raise VerificationError("no")

    clock = _Clock()
    monkeypatch.setattr(auth_module, "_HASHER", Refuse())
    monkeypatch.setattr(time, "monotonic", clock)
    return clock


def test_failure_records_of_a_spray_of_addresses_expire_without_a_success(
        fast_failing_logins: _Clock) -> None:
    """Records left only with a success from the same address: a spray of failed logins
    from many addresses grew the table for ever."""
    auth = ConsoleAuth(settings(login_failures=3, login_window=60))
    for i in range(500):
        assert auth.login("alice", "wrong", f"10.1.{i // 256}.{i % 256}") is None
    assert len(auth.failures) == 500
    fast_failing_logins.now += 61

    assert auth.login("alice", "wrong", "10.9.9.9") is None

    assert len(auth.failures) == 1 and "10.9.9.9" in auth.failures


def test_the_failure_table_has_a_ceiling_oldest_out(fast_failing_logins: _Clock) -> None:
    auth = ConsoleAuth(settings(login_failures=3, login_window=300))
    for i in range(10_050):
        fast_failing_logins.now += 0.001
        auth.login("alice", "wrong", f"10.2.{i // 256}.{i % 256}")

    assert len(auth.failures) == 10_000
    assert "10.2.0.0" not in auth.failures and "10.2.0.49" not in auth.failures
    assert "10.2.0.50" in auth.failures and "10.2.39.65" in auth.failures


def test_a_blocked_address_stays_blocked_under_a_spray_from_others() -> None:
    from router.service.console.login_limit import LoginFailures, TooManyFailures

    table = LoginFailures(limit=2, window=60, max_addresses=50)
    table.count("10.0.0.1", now=0.0)
    table.count("10.0.0.1", now=1.0)
    for i in range(40):  # fewer addresses than the cap, all in the window
        table.count(f"10.3.0.{i}", now=2.0 + i / 100)
    with pytest.raises(TooManyFailures):
        table.count("10.0.0.1", now=30.0)
    assert table.blocked("10.0.0.1", now=30.0) and not table.blocked("10.0.0.1", now=62.0)


def test_a_success_takes_back_only_its_own_failure() -> None:
    from router.service.console.login_limit import LoginFailures

    table = LoginFailures(limit=5, window=60)
    first = table.count("10.0.0.1", now=0.0)
    second = table.count("10.0.0.1", now=1.0)
    table.forgive("10.0.0.1", second)
    assert "10.0.0.1" in table
    table.forgive("10.0.0.1", first)
    assert "10.0.0.1" not in table and len(table) == 0
    table.forgive("10.0.0.2", 5.0)  # gone meanwhile (expired or evicted): nothing to do

@pytest.mark.parametrize("name", ["..", ".", "../../etc/x", "/", ""])
def test_the_rule_tester_never_uses_the_client_file_name(name: str, tmp_path: object) -> None:
    from router.core.config import default_config
    from router.service.console.auth import Identity
    from router.service.console.forms import Posted
    from router.service.console.views_rules import test

    who = Identity("victor", "viewer", "token")
    upload = Path(str(tmp_path)) / "upload"
    upload.write_bytes(b"not DICOM at all")
    answer = test(who, default_config(), Posted({}, {"file": (name, upload)}))
    assert answer.status == 200
    assert b"cannot be read as DICOM" in answer.body


def test_role_names_show_and_every_kind_of_secret_stays_masked() -> None:
    """console.token_role is a role name (viewer, operator, admin), not a secret."""
    data = {"console": {"token_role": "operator", "token_file": "/etc/t",
                        "users": [{"username": "a", "role": "admin", "password_hash": "h"}],
                        "tls_key": "/etc/k.pem", "tls_key_password_file": "/run/p"},
            "listen": {"users": [{"username": "b", "passcode_hash": "pbkdf2"}]},
            "x": {"passphrase": "p", "key_passphrase": "p", "api_key": "k", "apikey": "k",
                  "private_key": "k", "client_secret": "s", "bearer_token": "t",
                  "password": "p", "Password": "p"}}
    out = masked(data)
    assert out["console"] == {"token_role": "operator", "token_file": "/etc/t",
                              "users": [{"username": "a", "role": "admin",
                                         "password_hash": "***"}],
                              "tls_key": "/etc/k.pem", "tls_key_password_file": "/run/p"}
    assert out["listen"]["users"] == [{"username": "b", "passcode_hash": "***"}]
    assert set(out["x"].values()) == {"***"}, out["x"]


def test_the_destinations_page_says_when_the_broker_is_hung() -> None:
    from router.service.console.auth import Identity
    from router.service.console.views_overview import destinations

    who = Identity("olga", "operator", "csrf")
    row = {"pacs": {"depth": 3, "up": True}}
    current = {"broker": {"destinations": row, "stale": False, "updated": time.time()}}
    assert b"has not reported" not in destinations(who, current, ["pacs"], "").body
    hung = {"broker": {"destinations": row, "stale": True, "updated": time.time() - 120}}
    body = destinations(who, hung, ["pacs"], "").body
    assert b"The broker has not reported for 2m (hung or down)" in body
    assert b"not reported yet" in destinations(who, {}, ["pacs"], "").body


def test_the_running_config_shows_config_keys_not_python_names() -> None:
    from router.core.config import parse_config
    from router.service.console.auth import Identity
    from router.service.console.views_rules import rules

    config = parse_config({
        "destinations": {"a": {"type": "folder", "path": "/a"}},
        "rules": [{"name": "first", "forward": ["a"], "continue": True},
                  {"name": "rest", "forward": ["a"]}]})
    body = rules(Identity("olga", "viewer", None), config, "").body.decode()
    assert "continue: true" in body and "continue_" not in body


def test_the_https_console_tells_browsers_to_keep_to_https() -> None:
    from router.service.console.app import Console

    console = make_console()
    assert isinstance(console, Console)
    answer = console(Request("GET", "/console/login", "", {}, b"", "127.0.0.1"))
    assert answer is not None
    assert "Strict-Transport-Security" not in dict(answer.headers)  # plain HTTP: meaningless
    console.secure = True
    answer = console(Request("GET", "/console/login", "", {}, b"", "127.0.0.1"))
    assert answer is not None
    assert dict(answer.headers)["Strict-Transport-Security"] == "max-age=31536000"
