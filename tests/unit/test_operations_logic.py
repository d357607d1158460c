"""Pure logic behind operations: reload plans, bounded labels, queue age, the status screen."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from router.broker.deliveries import DestinationPolicy, JobState
from router.cli.status_screen import Reading, duration, render, size
from router.core.config import default_config, parse_config
from router.core.metrics import BoundedLabel
from router.core.reload import ReloadRefused, load, plan, save
from router.service.metric_samples import parse_metrics, total

from .helpers import make_header
from .test_dispatch import RETRY, make_dispatcher

# --- reload plans --------------------------------------------------------------------------------

def test_a_rule_change_is_for_the_acceptor_only() -> None:
    """A rule's match or priority: only the acceptor routes."""
    old = default_config()
    new = parse_config({**old.model_dump(mode="json", by_alias=True),
                        "rules": [{"name": "store-everything", "forward": ["received"],
                                   "match": {"called_ae": "X"}, "priority": "high"}]})
    steps = plan(old, new)
    assert steps.changed == ("rules",) and steps.acceptor and not steps.pipeline


@pytest.mark.parametrize("change", [{"deidentify": {"retain_dates": True}},
                                    {"morph": [{"action": "delete", "tag": "StationName"}]}])
def test_a_rules_transform_change_restarts_the_workers(change: dict[str, object]) -> None:
    """Workers morph and de-identify with the rules they started with: a reload changing a
    rule's deidentify (burned_in_annotation: send, a `keep` removed) was not applied there
    until a restart."""
    data = default_config().model_dump(mode="json", by_alias=True)
    data["rules"] = [{"name": "x", "forward": ["received"], "deidentify": {}}]
    old = parse_config(data)
    data["rules"] = [{**data["rules"][0], **change}]
    steps = plan(old, parse_config(data))
    assert steps.changed == ("rules",) and steps.acceptor and steps.pipeline


def test_a_destination_change_restarts_the_pipeline() -> None:
    old = default_config()
    data = old.model_dump(mode="json", by_alias=True)
    data["destinations"]["received"]["max_parallel"] = 9
    steps = plan(old, parse_config(data))
    assert steps.changed == ("destinations.received.max_parallel",)
    assert steps.pipeline and not steps.acceptor


def test_a_known_ae_change_restarts_the_workers() -> None:
    """Workers resolve a commitment's requester in known_aes: they must see a new one."""
    old = default_config()
    data = old.model_dump(mode="json", by_alias=True)
    data["known_aes"] = {"NEWMODALITY": {"host": "127.0.0.1", "port": 11112}}
    steps = plan(old, parse_config(data))
    assert steps.changed == ("known_aes.NEWMODALITY",) and steps.pipeline


@pytest.mark.parametrize("change", [{"log_level": "DEBUG"}, {"log_format": "json"},
                                    {"queue": {"max_jobs": 77}}])
def test_log_settings_and_queue_bounds_restart_no_worker(change: dict[str, object]) -> None:
    """Every process applies its logging on SIGHUP and the broker the queue bounds: a
    restart of the workers cancelled relayed retrieves for nothing."""
    old = default_config()
    steps = plan(old, parse_config({**old.model_dump(mode="json", by_alias=True), **change}))
    assert steps.changed and not steps.pipeline


@pytest.mark.parametrize("key", ["listen.port", "spool.path", "workers", "ae_title",
                                 "metrics.port", "listen.tls.mode", "listen.acceptors"])
def test_keys_that_need_a_restart_refuse_the_whole_file(key: str) -> None:
    old = default_config()
    data = old.model_dump(mode="json", by_alias=True)
    values = {"listen.port": 104, "spool.path": "/other", "workers": 7, "ae_title": "OTHER",
              "metrics.port": 9999, "listen.tls.mode": "tls",
              "listen.acceptors": old.listen.acceptors + 1}
    section, _, leaf = key.rpartition(".")
    target = data
    for part in filter(None, section.split(".")):
        target = target[part]
    target[leaf] = values[key]
    if key == "listen.tls.mode":
        data["listen"]["tls"].update(cert="c.pem", key="k.pem")
    with pytest.raises(ReloadRefused, match=key.replace(".", r"\.")):
        plan(old, parse_config(data))


def test_the_saved_config_round_trips_with_its_generation(tmp_path: Path) -> None:
    assert load(tmp_path) is None
    config = default_config()
    save(config, tmp_path, 3)
    assert load(tmp_path) == (3, config)
    assert (tmp_path / "config.json").stat().st_mode & 0o077 == 0  # private: may hold hashes


# --- bounded labels ------------------------------------------------------------------------------

def test_calling_ae_labels_are_bounded() -> None:
    label = BoundedLabel(limit=2)
    assert [label("A"), label(b"B "), label("C"), label("A"), label("")] == \
        ["A", "B", "other", "A", "other"]


def test_a_calling_ae_label_that_is_no_ae_title_is_invalid_and_takes_no_place() -> None:
    # Rejected titles are still counted (associations_total{result="rejected"}): control
    # bytes must not reach the /metrics text.
    label = BoundedLabel(limit=1)
    assert [label("EVIL\nCT"), label("\x1b[2J"), label("A\\B"), label("CT1")] == \
        ["invalid", "invalid", "invalid", "CT1"]


# --- queue age and reconfiguration ---------------------------------------------------------------

def test_oldest_age_is_that_of_the_oldest_job_still_pending_there() -> None:
    dispatcher = make_dispatcher()
    dispatcher.wall = dispatcher.steady = lambda: 300.0
    first = make_header("job-1", ("pacs", "archive"), received_at=100.0)
    second = make_header("job-2", ("pacs",), received_at=200.0)
    dispatcher.add_job(first)
    dispatcher.add_job(second)
    assert dispatcher.oldest_age("pacs") == 200.0
    dispatcher.jobs[first.job_id].pending.discard("pacs")
    assert dispatcher.oldest_age("pacs") == 100.0
    assert dispatcher.oldest_age("archive") == 200.0
    assert dispatcher.oldest_age("nowhere") == 0.0


def test_a_step_of_the_system_clock_leaves_the_queue_age_as_it_is() -> None:
    """By the system clock, an instance queued for 5 s was 7,205 s old after a step forward
    of two hours (the stuck-queue alert fired), and 0 s old after a step back."""
    dispatcher = make_dispatcher()
    clock = {"wall": 1_700_000_000.0, "steady": 1_700_000_000.0}
    dispatcher.wall, dispatcher.steady = (lambda: clock["wall"]), (lambda: clock["steady"])
    dispatcher.add_job(make_header("job-1", ("pacs",), received_at=clock["wall"]))
    waited = 0.0
    for step in (0.0, 7200.0, -14400.0):  # none, two hours forward, then two hours back
        clock["wall"] += step + 5
        clock["steady"] += 5
        waited += 5
        assert dispatcher.oldest_age("pacs") == waited


class _CountingJobs(dict[str, JobState]):
    """The dispatcher's jobs, counting each job state a read-out touches."""

    touched = 0

    def values(self) -> Any:
        for state in super().values():
            self.touched += 1
            yield state

    def items(self) -> Any:
        for item in super().items():
            self.touched += 1
            yield item

    def __iter__(self) -> Iterator[str]:
        for key in super().__iter__():
            self.touched += 1
            yield key

    def get(self, key: str, default: Any = None) -> Any:
        self.touched += 1
        return super().get(key, default)


def test_the_queue_ages_cost_steps_per_destination_not_per_queued_job() -> None:
    """Every heartbeat reads every destination's oldest pending job: walking all the jobs for
    each (60 destinations, 10,000 jobs for one of them) cost an idle broker a core's share."""
    names = [f"d{i:02}" for i in range(60)]
    dispatcher = make_dispatcher(dict.fromkeys(names, 1), max_jobs=100_000)
    dispatcher.wall = dispatcher.steady = lambda: 4000.0
    dispatcher.jobs = jobs = _CountingJobs()
    for i in range(2000):
        dispatcher.add_job(make_header(f"job-{i}", ("d00",), received_at=1000.0 + i))
    dispatcher.add_job(make_header("moved", ("d01",), received_at=50.0))
    for i in range(500):  # half the oldest end, out of the heartbeat's sight
        dispatcher.jobs[f"job-{i}"].pending.discard("d00")
    jobs.touched = 0

    for _ in range(10):  # ten heartbeats
        ages = {name: dispatcher.oldest_age(name) for name in names}

    assert ages["d00"] == 2500.0 and ages["d01"] == 3950.0  # received at 1500 and 50
    assert all(ages[name] == 0.0 for name in names[2:])
    assert jobs.touched <= 10 * len(names) + 500  # each ended job is passed over once


def test_reconfigure_adds_destinations_and_keeps_queued_work() -> None:
    dispatcher = make_dispatcher({"pacs": 1})
    dispatcher.add_job(make_header(destinations=("pacs",)))
    dispatcher.reconfigure({"archive": DestinationPolicy(2, RETRY)}, max_jobs=5, max_bytes=10)
    assert set(dispatcher.queues) == {"pacs", "archive"}
    assert len(dispatcher.queues["pacs"]) == 1  # no longer configured: still queued
    assert dispatcher.policies["archive"].max_parallel == 2 and dispatcher.max_jobs == 5


# --- the status screen ---------------------------------------------------------------------------

def test_sizes_and_durations_read_well() -> None:
    assert [size(0), size(2048), size(3 * 1024**3)] == ["0 B", "2.0 KB", "3.0 GB"]
    assert [duration(5), duration(125), duration(7300), duration(3 * 86400)] == \
        ["5s", "2m05s", "2h01m", "3d00h"]


METRICS = """\
# TYPE dicom_router_instances_forwarded_total counter
dicom_router_instances_forwarded_total{destination="pacs",result="delivered"} %d
dicom_router_instances_forwarded_total{destination="pacs",result="failed"} 2
# TYPE dicom_router_refusals_total counter
dicom_router_refusals_total{reason="queue_full"} 4
"""


def test_render_computes_rates_and_lists_errors() -> None:
    wall = time.time()
    status = {
        "ae_title": "ROUTER", "listen": "0.0.0.0:11112", "ready": False,
        "ready_reason": "draining", "started_at": wall - 60, "version": "1",
        "processes": [{"name": "broker", "pid": 1, "alive": False, "restarts": 3}],
        "acceptor-1": {"accepted": 3, "stored": 9, "associations": [{
            "calling_ae": "CT1", "called_ae": "ROUTER", "peer": "10.0.0.1:5000", "tls": True,
            "started_at": wall - 30, "instances": 4, "bytes_received": 5 * 1024**2,
            "current_bytes": 1024**2, "last_activity": wall}]},
        "acceptor-2": {"accepted": 1, "stored": 2, "associations": [{
            "calling_ae": "MR2", "called_ae": "ROUTER", "peer": "10.0.0.2:5000", "tls": False,
            "started_at": wall - 10, "instances": 2, "bytes_received": 1024,
            "current_bytes": 0, "last_activity": wall}]},
        "broker": {"destinations": {"pacs": {
            "depth": 7, "in_flight": 1, "oldest_seconds": 90, "up": False, "paused_for": 20,
            "failures_in_a_row": 3, "concurrency": 1, "associations": 1}}},
    }
    before = Reading(status, parse_metrics(METRICS % 10), 0.0)
    now = Reading(status, parse_metrics(METRICS % 30), 2.0)
    assert total(now.samples, "dicom_router_instances_forwarded_total", destination="pacs") == 32
    console = Console(width=200, no_color=True, force_terminal=False, record=True)
    console.print(render(before, now))
    text = console.export_text()
    assert "NOT READY: draining" in text and "broker (DOWN) restarted 3x" in text
    assert "CT1" in text and "1.0 MB" in text and "5.0 MB" in text
    # Every acceptor's associations, oldest first, and each acceptor's totals.
    assert "Associations (2 open)" in text and text.index("CT1") < text.index("MR2")
    assert "acceptor-1: 3 associations, 9 instances stored, acceptor-2: 1 associations, 2 " \
        "instances stored" \
        in text
    pacs = next(line for line in text.splitlines() if "│ pacs" in line)
    assert [c.strip() for c in pacs.split("│") if c.strip()] == \
        ["pacs", "backing off 20s", "1/1", "7", "1", "1m30s", "10.0", "30", "0", "2", "0", "0"]
    assert "refused (0xA700 / busy): queue_full 4" in text


def test_status_shows_storage_commitment_results_kept_for_their_requester() -> None:
    """A result its requester did not take is on the spool, sent again: visible beside the
    spool, not only in the log."""
    status = {"ready": True, "started_at": time.time(), "processes": [],
              "commitment_results_kept": 2}
    console = Console(width=200, no_color=True, force_terminal=False, record=True)
    console.print(render(Reading(status, parse_metrics(""), 0.0),
                         Reading(status, parse_metrics(""), 1.0)))
    assert "storage commitment results kept for their requester: 2" in console.export_text()
    console = Console(width=200, no_color=True, force_terminal=False, record=True)
    quiet = {**status, "commitment_results_kept": 0}
    console.print(render(Reading(quiet, parse_metrics(""), 0.0),
                         Reading(quiet, parse_metrics(""), 1.0)))
    assert "commitment" not in console.export_text()


def test_peer_text_is_drawn_as_text_never_read_as_markup() -> None:
    """A calling AE "[/]" is a valid AE title: rich's markup parser died on it."""
    wall = time.time()
    status = {
        "ready": True, "started_at": wall, "processes": [],
        "acceptor-1": {"associations": [{
            "calling_ae": "[/]", "called_ae": "[green]OK", "peer": "[bold]10.0.0.1:5000",
            "tls": False, "started_at": wall, "instances": 0, "bytes_received": 0,
            "current_bytes": 0, "last_activity": wall}]},
        "broker": {"destinations": {"[red]x": {
            "depth": 0, "in_flight": 0, "oldest_seconds": 0, "up": True}}},
    }
    reading = Reading(status, parse_metrics(""), 0.0)
    console = Console(width=200, no_color=True, force_terminal=False, record=True)
    console.print(render(reading, reading))
    text = console.export_text()
    assert "[/]" in text and "[green]OK" in text and "[bold]10.0.0.1:5000" in text
    assert "[red]x" in text


def test_destinations_list_warns_of_a_hung_brokers_rows() -> None:
    from router.cli.destinations import stale_warning

    assert stale_warning({"stale": False, "updated": 100.0}, 101.0) is None
    assert stale_warning({"stale": True, "updated": 100.0}, 137.4) == (
        "warning: the broker has not reported for 37s (hung or down): these rows are its "
        "last report, not the current state")
    assert "has not reported yet" in str(stale_warning({"stale": True, "updated": None}, 1.0))


def test_destinations_list_keeps_its_columns_with_a_long_state_or_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a state like 'paused by operator, backing off 2s (connection)' overran
    the fixed 28-character column and pushed that row's numbers out from under their
    headings."""
    from router.cli.destinations import _print_list

    _print_list({
        "pacs": {"up": False, "paused": True, "paused_for": 2,
                 "backing_off_because": "connection: cannot connect", "depth": 1,
                 "in_flight": 0, "associations": 0, "concurrency": 1},
        "a-destination-with-a-long-name": {"up": True, "depth": 12, "in_flight": 3},
    })
    lines = capsys.readouterr().out.splitlines()
    assert "paused by operator, backing off 2s (connection)" in lines[2]
    queued_end = lines[0].index("QUEUED") + len("QUEUED")
    assert [line[:queued_end].split()[-1] for line in lines] == ["QUEUED", "12", "1"], lines
    assert len({len(line) for line in lines}) == 1, lines  # every row as wide as the header


def test_a_destination_backing_off_says_why() -> None:
    from router.service.destination_state import state

    row = {"up": False, "paused_for": 12.2,
           "backing_off_because": "aborted: pacs sent no C-STORE response (aborted ...)"}
    assert state(row) == "backing off 12s (aborted)"
    assert state({"up": False, "paused_for": 3, "backing_off_because": ""}) == "backing off 3s"


def test_a_destination_whose_copies_wait_for_the_spool_says_so() -> None:
    """It is up (nothing wrong with it), yet its morphed copies wait for room on the spool."""
    from router.service.destination_state import state

    row = {"up": True, "waiting_for_spool": 30,
           "spool_wait_because": "spool_write: cannot write in the spool (/s/relay): ENOSPC"}
    assert state(row) == "waiting for the spool (spool_write)"
    assert state({"up": True, "waiting_for_spool": 0, "spool_wait_because": ""}) == "up"


@pytest.mark.parametrize("row", [
    {"up": False, "paused_for": 5},
    {"up": True, "busy_for": 3},
    {"up": True, "paused": True, "in_window": False, "fallback_to": "dr"},
    {"up": True, "removed": True},
    {"up": True},
])
def test_status_says_a_destinations_state_in_the_words_of_destinations_list(
        row: dict[str, object]) -> None:
    """README: the same states in `status`, `destinations list` and the console."""
    from router.service.destination_state import state

    row = {"depth": 0, "in_flight": 0, "oldest_seconds": 0, **row}
    reading = Reading({"broker": {"destinations": {"pacs": row}}}, parse_metrics(""), 0.0)
    console = Console(width=250, no_color=True, force_terminal=False, record=True)
    console.print(render(reading, reading))
    line = next(x for x in console.export_text().splitlines() if "│ pacs" in x)
    assert line.split("│")[2].strip() == state(row)
