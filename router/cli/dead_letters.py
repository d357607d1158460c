"""`dicom-router dead-letters list|show|replay|purge`: what an operator does with failures."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Sequence

from router.cli.common import argument, config_parent, metrics_url
from router.core.config import RouterConfig, default_config, load_config
from router.core.errors import RouterError
from router.core.letter_age import Age, Moment
from router.core.spool import Spool
from router.service import dead_letters

_Letter = dead_letters.DeadLetter | dead_letters.Damaged


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = config_parent("the router's config (for its spool)")
    parser = sub.add_parser("dead-letters", parents=[config],
                            help="list, show, replay or purge dead letters")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (("list", "list dead letters"), ("replay", "send them again"),
                       ("purge", "delete them")):
        action = actions.add_parser(name, help=text, parents=[config])
        action.add_argument("--destination", help="only those for this destination")
        action.add_argument("--reason", help="only those with this reason (e.g. no_context)")
        action.add_argument("--older-than", type=argument(dead_letters.parse_age),
                            metavar="AGE",
                            help="only those that failed at least AGE ago (30s, 10m, 2h, 7d)")
        action.add_argument("--newer-than", type=argument(dead_letters.parse_age),
                            metavar="AGE", help="only those that failed at most AGE ago")
        action.add_argument("ids", nargs="*", help="only these ids (from `list`), or job ids "
                                                  "as the log prints them")
        if name == "list":
            action.add_argument("--json", action="store_true", help="one JSON object a line")
        if name == "replay":
            action.add_argument("--to", help="send to this destination instead")
        if name == "purge":
            action.add_argument("--all", action="store_true",
                                help="needed to purge without any filter")
    show = actions.add_parser("show", parents=[config],
                              help="everything known about one dead letter")
    show.add_argument("id", help="its id (from `list`), the job id the log printed (every "
                                 "destination's dead letter of that job), or its file")
    parser.set_defaults(func=run)


def _once(letters: list[dead_letters.DeadLetter]) -> tuple[list[dead_letters.DeadLetter],
                                                             list[str]]:
    """Each letter once, in the order first named, and the ids named more than once: an id
    given twice (or as itself and within its job id) stopped a replay at the repeat
    ("replayed or purged meanwhile") with the rest undone."""
    unique: dict[str, dead_letters.DeadLetter] = {}
    repeated: dict[str, None] = {}
    for letter in letters:
        if letter.id in unique:
            repeated[letter.id] = None
        unique.setdefault(letter.id, letter)
    return list(unique.values()), list(repeated)


def _selected(spool: Spool, args: argparse.Namespace, damaged: list[dead_letters.Damaged]
              ) -> tuple[list[dead_letters.DeadLetter], list[str]]:
    """The letters chosen; the records that cannot be read go to `damaged`, except those
    named for show or replay, which stop the command with what is wrong."""
    if args.ids:
        named = damaged if args.action == "purge" else None
        return _once([letter for i in args.ids
                      for letter in dead_letters.lookup(spool, i, named)])
    selection = dead_letters.Filter(args.destination, args.reason, args.older_than,
                                    args.newer_than)
    return dead_letters.find(spool, selection, damaged), []


def _unreadable(damaged: list[dead_letters.Damaged], as_json: bool) -> None:
    for bad in damaged:  # one bad record must not hide the others: say it, and go on
        print(f"unreadable dead letter {bad.id} ({bad.record_path}): {bad.why}; "
              f"`dicom-router dead-letters purge {bad.id}` removes it",
              file=sys.stderr if as_json else sys.stdout)


def _repeats(repeated: list[str], done: str) -> None:
    for letter_id in repeated:
        print(f"{letter_id} was named more than once: {done} once")


def _age(age: Age) -> str:
    """`*`: written before the system clock stepped back, so its age is not known."""
    seconds = age.seconds
    mark = "*" if age.stepped_back else ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}{mark}"
    return f"{seconds:.0f}s{mark}"


def _unwritten(config: RouterConfig, destination: str | None) -> int:
    """Dead letters the running router gave up whose records its full spool could not take
    yet (/status `dead_letters_unwritten`): not on the spool, so not listed. 0 when no
    router answers at the config's metrics address (the list itself is the spool's)."""
    if not config.metrics.enabled:
        return 0
    url = metrics_url(config.metrics.host, config.metrics.port)
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=3) as response:
            broker = json.loads(response.read())["broker"]
        # Every destination's, one no longer configured too (a router before this had
        # only the rows')
        counts = broker.get("dead_letters_unwritten") or {
            name: row.get("dead_letters_unwritten", 0)
            for name, row in broker["destinations"].items()}
        return sum(int(n) for name, n in counts.items() if destination in (None, name))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def _list(letters: list[dead_letters.DeadLetter], as_json: bool, unwritten: int) -> None:
    if unwritten:  # the spool alerts send the operator here: say they exist
        print(f"{unwritten} dead letters wait to be written: the spool is full; the router "
              "writes them, and they are listed, once it has room",
              file=sys.stderr if as_json else sys.stdout)
    if as_json:
        now = Moment.read()
        for letter in letters:
            print(json.dumps(letter.as_dict(now)))
        return
    if not letters:
        print("no dead letters on the spool" if unwritten else "no dead letters")
        return
    now = Moment.read()
    print(f"{'ID':<42} {'DESTINATION':<16} {'REASON':<28} {'TRIES':>5} {'AGE':>5}  DETAIL")
    for d in letters:
        print(f"{d.id:<42} {d.destination:<16} {d.reason:<28} {d.attempts:>5} "
              f"{_age(d.age(now)):>5}  {d.detail[:80]}")
    print(f"{len(letters)} dead letters")
    if any(d.age(now).stepped_back for d in letters):
        print("*: written before the system clock stepped back (its age is not known)")


def _audit(config: RouterConfig, action: str, done: Sequence[_Letter], *,
           ok: bool, to: str | None = None, left: Sequence[_Letter] | None = None) -> None:
    """The same record as the operator API's (router/service/control_api.py)."""
    ids = ", ".join(d.id for d in done)[:500]
    verb = "replayed" + (f" to {to}" if to else "") if action == "replay" else "purged"
    detail = f"{len(done)} dead letter(s) {verb}: {ids}"
    if left:
        detail = (f"{action} stopped at {left[0].id}; done {len(done)}: {ids}; not done "
                  f"{len(left)}: {', '.join(d.id for d in left)[:500]}")
    # Here, not at import: the trail imports router.core.metrics, and `dicom-router run`
    # must import that only after it set PROMETHEUS_MULTIPROC_DIR (router/core/metrics.py).
    from router.audit.operator import record_cli_action

    record_cli_action(config.audit, config.ae_title, action=f"dead letters {action}",
                      detail=detail, ok=ok)


def _stopped(action: str, letter: _Letter, done: int, total: int,
             exc: OSError) -> int:
    """The spool refused (disk full, read-only): one line, and what was done before."""
    where = f" ({exc.filename})" if exc.filename else ""
    print(f"dicom-router: error: cannot {action} {letter.id}: {exc.strerror or exc}{where}; "
          f"{done} of {total} dead letters {action}{'ed' if action == 'replay' else 'd'}, "
          f"the rest left as they were", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    config: RouterConfig = load_config(args.config) if args.config else default_config()
    spool = Spool(config.spool.path)
    if not spool.dead_letters.is_dir():
        if not args.config:  # the built-in default's spool: likely not the router's
            raise RouterError(f"no spool at {spool.root}: pass the router's --config")
        never = f"the router has not run with the spool at {spool.root} yet"
        if args.action == "list":  # nothing to list is an answer, not an error
            print(f"no dead letters: {never}", file=sys.stderr if args.json else sys.stdout)
            return 0
        raise RouterError(f"{never}: it has no dead letters")
    if args.action == "show":
        for letter in dead_letters.lookup(spool, args.id):
            print(json.dumps(letter.as_dict(), indent=2))
        return 0
    damaged: list[dead_letters.Damaged] = []
    letters, repeated = _selected(spool, args, damaged)
    if args.action == "list":
        waiting = 0 if args.ids or not args.config else _unwritten(config, args.destination)
        _unreadable(damaged, args.json)
        _list(letters, args.json, waiting)
    elif args.action == "replay":
        if args.to is not None and args.to not in config.destinations:
            raise RouterError(f"--to {args.to!r} is not a destination in the config "
                              f"(known: {', '.join(sorted(config.destinations))})")
        siblings = dead_letters.Siblings(spool)  # one listing for the lot
        for done, letter in enumerate(letters):
            try:
                job = dead_letters.replay(spool, letter, args.to, siblings)
            except OSError as exc:
                _audit(config, "replay", letters[:done], ok=False, left=letters[done:])
                return _stopped("replay", letter, done, len(letters), exc)
            print(f"{letter.id} -> job {job.job_id} for {job.destinations[0]}")
        _audit(config, "replay", letters, ok=True, to=args.to)
        _repeats(repeated, "replayed")
        _unreadable(damaged, False)  # left as they are: what they held is unknown
        print(f"{len(letters)} dead letters replayed; the router queues them within a second")
    elif args.action == "purge":
        unfiltered = not (args.ids or args.destination or args.reason or args.older_than
                          or args.newer_than)
        if unfiltered and not args.all:
            raise RouterError("purge without a filter deletes every dead letter: add --all")
        if not (args.ids or unfiltered):
            _unreadable(damaged, False)  # a filter cannot tell what they held: left
            damaged = []
        siblings = dead_letters.Siblings(spool)  # one listing for the lot
        chosen: list[dead_letters.DeadLetter | dead_letters.Damaged] = [*letters, *damaged]
        for done, each in enumerate(chosen):
            try:
                if isinstance(each, dead_letters.Damaged):
                    dead_letters.purge_damaged(spool, each)
                else:
                    dead_letters.purge(spool, each, siblings)
            except OSError as exc:
                _audit(config, "purge", chosen[:done], ok=False, left=chosen[done:])
                return _stopped("purge", each, done, len(chosen), exc)
        _audit(config, "purge", chosen, ok=True)
        _repeats(repeated, "purged")
        print(f"{len(chosen)} dead letters purged")
    return 0

