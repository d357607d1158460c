"""The operator API on the HTTP port: destinations and dead letters as JSON.

  GET  /api/destinations                         state of every destination (as in /status),
                                                 with "stale" and "updated" (the broker's report)
  POST /api/destinations/<name>/pause|resume|retry
  POST /api/destinations/<name>/drain            {"to": "<other destination>"}
  GET  /api/dead-letters?destination=&reason=&calling_ae=&older_than=2h&newer_than=
                         &limit=500&after=<id>   one page by id (their jobs' arrival), with
                                                 "total" and "next" (the after of the next)
  GET  /api/dead-letters/<id>
  POST /api/dead-letters/<id>/replay             {"to": "<destination>"} (optional)
  POST /api/dead-letters/<id>/purge
  POST /api/dead-letters/replay|purge            {"ids": [...]} or filters as above, or
                                                 {"all": true} (never implied by an empty body)

Destination actions go to the broker (router/broker/control.py), the owner of the queue; dead
letters are files on the spool (router/service/dead_letters.py: replay stages a job the broker takes
within a second). Every action, done or refused, is logged and audited with who and from
where (router/service/api_auth.py, router/audit/operator.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from router.audit.operator import record_action
from router.audit.trail import AuditTrail
from router.core.config import RouterConfig
from router.core.errors import RouterError
from router.core.letter_age import Moment
from router.core.spool import Spool
from router.core.status_snapshots import is_stale
from router.service import dead_letters
from router.service.api_auth import ApiAuth
from router.service.api_bodies import BulkBody, DrainBody, LetterBody, NoBody, parse
from router.service.control_client import BrokerUnavailable, ControlClient
from router.service.http_types import Request, Response, json_response

log = logging.getLogger(__name__)

_DESTINATION = re.compile(r"/api/destinations/([A-Za-z0-9_-]{1,64})/(pause|resume|retry|drain)")
_LETTER = re.compile(r"/api/dead-letters/([0-9a-f]{8,64}(?:\.[A-Za-z0-9_-]{1,64})?)"
                     r"(?:/(replay|purge))?")
_BULK = re.compile(r"/api/dead-letters/(replay|purge)")
_LETTER_ID = re.compile(r"[0-9a-f]{8,64}\.[A-Za-z0-9_-]{1,64}")
# Dead letters a page of GET /api/dead-letters holds: the whole list was 41 MB of JSON at
# 50,000, built in memory by the process that serves the console.
PAGE_DEFAULT = 500
PAGE_MAX = 5000


class ControlApi:
    def __init__(self, config: Callable[[], RouterConfig], client: ControlClient,
                 destinations: Callable[[], dict[str, Any]], audit: AuditTrail | None) -> None:
        self.config = config  # the running config (it changes on reload)
        self.client = client
        self.destinations = destinations  # the broker's live rows (router/broker/main.py)
        self.audit = audit
        self.auth = ApiAuth(config().api.token_file, config().metrics.host)
        self.spool = Spool(config().spool.path)

    def __call__(self, request: Request) -> Response | None:
        if not request.path.startswith("/api/"):
            return None
        actor, refusal = self._admitted(request)
        return refusal if actor is None else self.route_checked(request, actor)

    def head_answer(self, head: Request) -> Response | None:
        """The refusal a request gets from its head alone (no or a wrong token, not JSON):
        sent instead of `100 Continue`, so that its body never comes (http_types.py)."""
        return self._admitted(head)[1] if head.path.startswith("/api/") else None

    def _admitted(self, request: Request) -> tuple[str | None, Response | None]:
        """Who asks, or the refusal (logged and audited); both depend on the head only."""
        verdict = self.auth.check(request)
        if verdict.actor is None:
            self._record("?", request, "access", verdict.why, ok=False, refused_access=True)
            return None, json_response(403, {"error": verdict.why})
        if ApiAuth.cross_site(request):
            why = "a POST must have Content-Type: application/json"
            self._record(verdict.actor, request, "access", why, ok=False, refused_access=True)
            return None, json_response(415, {"error": why})
        return verdict.actor, None

    def route_checked(self, request: Request, actor: str) -> Response:
        """route(), with a bad request answered 400 (and a refused POST logged, audited).
        The console calls this for its actions after its own checks of who may act."""
        try:
            return self.route(request, actor)
        except (RouterError, ValueError, KeyError) as exc:
            # str() of a KeyError quotes it; its argument is the message
            why = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            if request.method == "POST":
                self._record(actor, request, f"POST {request.path}", why, ok=False)
            return json_response(400, {"error": why})

    def route(self, request: Request, actor: str) -> Response:
        path, post = request.path.rstrip("/"), request.method == "POST"
        if path == "/api/destinations" and not post:
            return json_response(200, self._destination_rows())
        if path == "/api/dead-letters" and not post:
            return self._list(request)
        if post and (match := _DESTINATION.fullmatch(path)):
            return self._destination(request, actor, match[1], match[2])
        if post and (match := _BULK.fullmatch(path)):
            return self._letters(request, actor, match[1], None)
        if match := _LETTER.fullmatch(path):
            if match[2] is None and not post:
                letters = dead_letters.lookup(self.spool, match[1])
                now = Moment.read()
                return json_response(200, {"dead_letters": [d.as_dict(now) for d in letters]})
            if match[2] is not None and post:
                return self._letters(request, actor, match[2], match[1])
        return json_response(404 if not post else 405,
                             {"error": f"no {request.method} {path}: see docs/operations.md "
                                       "(Operator API)"})

    # --- destinations ----------------------------------------------------------------------

    def _destination_rows(self) -> dict[str, Any]:
        """The rows, and whether they are current: a hung or dead broker's last report
        must not pass for the present. `updated` is None while the broker never reported."""
        rows = self.destinations()
        times = [float(r["updated"]) for r in rows.values() if "updated" in r]
        updated = min(times) if times else None
        stale = updated is None or is_stale(updated, time.time())
        return {"destinations": rows, "stale": stale, "updated": updated}

    def _destination(self, request: Request, actor: str, name: str, action: str) -> Response:
        if action == "drain":
            target = parse(DrainBody, request).to
        else:
            parse(NoBody, request)  # a body here is a mistake worth saying
            target = ""
        what = f"{action} {name}" + (f" to {target}" if target else "")
        try:
            reply = self.client.request(action, name, target, actor, request.client)
        except BrokerUnavailable as exc:
            self._record(actor, request, what, str(exc), ok=False)
            return json_response(503, {"error": str(exc)})
        self._record(actor, request, what, reply.detail, ok=reply.ok)
        if not reply.ok:
            return json_response(503 if reply.server_error else 400,
                                 {"error": reply.detail, **reply.counts})
        return json_response(200, {"ok": True, "detail": reply.detail, **reply.counts})

    # --- dead letters ----------------------------------------------------------------------

    def _filter(self, values: dict[str, Any]) -> dead_letters.Filter:
        def age(key: str) -> float | None:
            text = values.get(key)
            return dead_letters.parse_age(str(text)) if text else None

        return dead_letters.Filter(values.get("destination") or None,
                                   values.get("reason") or None,
                                   age("older_than"), age("newer_than"))

    def _list(self, request: Request) -> Response:
        """One page, by id; `next` is the `after` of the following page (None: the last)."""
        params = request.params()
        limit, after = _page_limit(params.get("limit")), params.get("after") or None
        if after is not None and not _LETTER_ID.fullmatch(after):
            raise ValueError(f"after={after[:80]!r} is not a dead letter id: pass the "
                             '"next" of the page before')
        calling = params.get("calling_ae")
        found = dead_letters.page(self.spool, self._filter(params), after, limit,
                                  (lambda d: d.job.calling_ae == calling) if calling else None)
        now = Moment.read()
        return json_response(200, {"dead_letters": [d.as_dict(now) for d in found.letters],
                                   "total": found.total, "limit": limit,
                                   "next": found.next_after,
                                   "unreadable": [d.as_dict() for d in found.unreadable],
                                   "unreadable_count": len(found.unreadable)})

    def _letters(self, request: Request, actor: str, action: str, letter_id: str | None
                 ) -> Response:
        """Every letter is found and checked before any is touched. A record that cannot be
        read is purged when named (or with "all"); replaying it says what is wrong."""
        damaged: list[dead_letters.Damaged] = []
        named = damaged if action == "purge" else None
        if letter_id is not None:
            to = parse(LetterBody, request).to
            letters = dead_letters.lookup(self.spool, letter_id, named)
        else:
            body = parse(BulkBody, request)
            to, letters = body.to, self._chosen(body, action, named)
        if to is not None and action != "replay":
            raise ValueError('"to" is for replay only')
        if action == "replay":
            self._check_replay(letters, to)
        return self._apply(request, actor, action, [*letters, *damaged], to)

    def _chosen(self, body: BulkBody, action: str, damaged: list[dead_letters.Damaged] | None
                ) -> list[dead_letters.DeadLetter]:
        filtered = any(body.filters().values())
        if body.ids is not None:
            if not body.ids:
                raise ValueError("ids is empty: nothing to " + action)
            if filtered or body.all:
                raise ValueError("send ids or filters (or all), not both")
            letters = [d for i in body.ids for d in dead_letters.lookup(self.spool, i, damaged)]
            seen: set[str] = set()
            for letter_id in [d.id for d in letters] + [d.id for d in damaged or []]:
                if letter_id in seen:
                    raise ValueError(f"dead letter {letter_id} is named twice")
                seen.add(letter_id)
            return letters
        if not filtered and not body.all:
            raise ValueError(f'{action} without ids or a filter would take every dead letter: '
                             'send "all": true for that')
        # A filter cannot tell what a damaged record held: only "all" takes those too
        everything = body.all and not filtered and damaged is not None
        return dead_letters.find(self.spool, self._filter(body.filters()),
                                 damaged if everything else None)

    def _check_replay(self, letters: list[dead_letters.DeadLetter], to: str | None) -> None:
        if to is not None and to not in self.config().destinations:
            known = ", ".join(sorted(self.config().destinations))
            raise ValueError(f"cannot replay to {to!r}: not a configured destination "
                             f"(configured: {known})")
        lost = [d.id for d in letters if not d.instance_path.exists()]
        if lost:
            raise ValueError(f"nothing replayed: dead letter(s) {', '.join(lost[:20])} lost "
                             "their instance; purge them")

    def _apply(self, request: Request, actor: str, action: str,
               letters: list[dead_letters.DeadLetter | dead_letters.Damaged], to: str | None
               ) -> Response:
        done: list[dict[str, str]] = []
        what = f"dead letters {action}"
        siblings = dead_letters.Siblings(self.spool)  # one listing for the lot
        for index, letter in enumerate(letters):
            try:
                if isinstance(letter, dead_letters.Damaged):  # purge only (_letters)
                    dead_letters.purge_damaged(self.spool, letter)
                    done.append({"id": letter.id})
                elif action == "replay":
                    job = dead_letters.replay(self.spool, letter, to, siblings)
                    done.append({"id": letter.id, "job_id": job.job_id,
                                 "destination": job.destinations[0]})
                else:
                    dead_letters.purge(self.spool, letter, siblings)
                    done.append({"id": letter.id})
            except (RouterError, OSError) as exc:  # after checks: the spool changed under us
                return self._partial(request, actor, action, done, letters[index:], exc)
        verb = "replayed" + (f" to {to}" if to else "") if action == "replay" else "purged"
        detail = f"{len(done)} dead letter(s) {verb}"
        self._record(actor, request, what, f"{detail}: {_ids(done)}", ok=True)
        return json_response(200, {"ok": True, "detail": detail, "count": len(done),
                                   "dead_letters": done})

    def _partial(self, request: Request, actor: str, action: str, done: list[dict[str, str]],
                 left: list[dead_letters.DeadLetter | dead_letters.Damaged], exc: Exception
                 ) -> Response:
        """Part done: say exactly what was and what was not, in all three places."""
        not_done = [d.id for d in left]
        why = (f"{action} stopped at {left[0].id}: {exc}; done {len(done)}: {_ids(done)}; "
               f"not done {len(not_done)}: {', '.join(not_done)[:500]}")
        self._record(actor, request, f"dead letters {action}", why, ok=False)
        return json_response(500, {"ok": False, "error": why, "count": len(done),
                                   "dead_letters": done, "not_done": not_done})

    def _record(self, actor: str, request: Request, action: str, detail: str, *, ok: bool,
                refused_access: bool = False) -> None:
        level = logging.INFO if ok else logging.WARNING
        log.log(level, "operator API: %s from %s: %s %s: %s", actor, request.client, action,
                "done" if ok else "refused", detail)
        record_action(self.audit, user=actor, address=request.client, action=action,
                      detail=detail, ok=ok, refused_access=refused_access)


def _page_limit(text: str | None) -> int:
    if text is None or text == "":
        return PAGE_DEFAULT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= PAGE_MAX:
        raise ValueError(f"limit={text[:80]!r}: a whole number from 1 to {PAGE_MAX}")
    return int(text)


def _ids(done: list[dict[str, str]]) -> str:
    return ", ".join(d["id"] for d in done)[:500]
