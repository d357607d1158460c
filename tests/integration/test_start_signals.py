"""Signals while the router starts: a SIGHUP (systemctl reload) must kill nothing, neither
the supervisor before its handler would be in place nor a child still importing, and the
reload it asks for is done once the router runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

from tests.integration.router_process import RouterProcess, wait_for

pytestmark = pytest.mark.integration


def router_config(tmp_path: Path) -> dict[str, object]:
    return {
        "workers": 2,
        "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
        "rules": [{"name": "all", "forward": ["out"]}],
    }


def spawned(router: RouterProcess, name: str) -> int | None:
    try:
        return router.child_pid(name)
    except LookupError:
        return None


def assert_nothing_died(router: RouterProcess) -> None:
    assert router.process is not None and router.process.poll() is None, router.log()[-3000:]
    assert "exited with code" not in router.log(), router.log()[-3000:]
    assert router.metric_sum("dicom_router_process_restarts_total") == 0


def test_a_sighup_while_the_children_spawn_is_honoured_once_the_router_runs(
        tmp_path: Path) -> None:
    router = RouterProcess(tmp_path / "router", router_config(tmp_path)).launch()
    try:
        # The supervisor has begun spawning: the broker is importing, the others follow.
        assert wait_for(lambda: spawned(router, "broker") is not None, interval=0.01), \
            router.log()
        assert router.process is not None
        router.process.send_signal(signal.SIGHUP)
        router.await_ready(60)
        # Reloaded (the file is unchanged), and only once the children heed a SIGHUP.
        assert wait_for(lambda: router.metric("dicom_router_config_reloads_total",
                                              result="unchanged") == 1), router.log()[-3000:]
        assert_nothing_died(router)
    finally:
        router.stop()


def test_a_child_ignores_a_sighup_from_its_first_instruction(tmp_path: Path) -> None:
    """Each child is sent SIGHUP as soon as it is spawned, long before its own handler."""
    router = RouterProcess(tmp_path / "router", router_config(tmp_path)).launch()
    names = ["broker", "worker-0", "worker-1", "acceptor-1"]
    hupped: set[str] = set()

    def hup_the_new_ones() -> bool:
        for name in names:
            pid = spawned(router, name)
            if pid is not None and name not in hupped:
                os.kill(pid, signal.SIGHUP)
                hupped.add(name)
        return len(hupped) == len(names)

    try:
        assert wait_for(hup_the_new_ones, interval=0.01), router.log()
        router.await_ready(60)
        assert_nothing_died(router)
    finally:
        router.stop()



def test_a_sighup_while_a_crashed_broker_restarts_reaches_its_replacement(
        tmp_path: Path) -> None:
    """The replacement ignores SIGHUP until its handler is in place, and was spawned with the
    config in force before the reload: the supervisor sends the reload's SIGHUP again once it
    reports. The reload is sent right after the supervisor logs the restart; an attempt
    whose SIGHUP reached the replacement only once it ran missed the window and is repeated."""
    config = {**router_config(tmp_path), "workers": 1, "listen": {"acceptors": 1}}
    router = RouterProcess(tmp_path / "router", config).start(60)
    in_window = 0
    try:
        for generation in range(1, 4):
            old = router.child_pid("broker")
            os.kill(old, signal.SIGKILL)
            assert wait_for(lambda o=old: spawned(router, "broker") != o, interval=0.01), \
                router.log()[-3000:]
            # A change the broker reloads and the workers need no restart for (a rule's
            # name or transforms would restart them: a reload then outlasts the window).
            reprioritize_rule(router, ("urgent", "high", "low")[generation - 1])
            assert router.process is not None
            router.process.send_signal(signal.SIGHUP)
            # The replacement applies the reloaded config and reports its generation.
            assert wait_for(lambda g=generation: broker_generation(router) == g), \
                router.log()[-3000:]
            assert "did not confirm the reloaded config" not in router.log()
            if "broker was starting during a SIGHUP: sending it again" in router.log():
                in_window += 1
                break
        assert in_window, "no reload came while the broker restarted:\n" + router.log()[-3000:]
        router.await_ready(60)
    finally:
        router.stop()


def reprioritize_rule(router: RouterProcess, priority: str) -> None:
    config = yaml.safe_load(router.config_path.read_text())
    config["rules"][0]["priority"] = priority
    router.config_path.write_text(yaml.safe_dump(config))


def broker_generation(router: RouterProcess) -> int | None:
    try:
        return router.status().get("broker", {}).get("config_generation")
    except OSError:
        return None


def test_a_broker_killed_during_a_reload_is_restarted_before_the_reload_ends(
        tmp_path: Path) -> None:
    """A reload that restarts the workers waits for each to reach the broker; a broker that
    died meanwhile was restarted only after those waits (30 s per worker): every C-STORE got
    0xA700 for a minute. The reload's waits now restart the other children as the main loop
    does. An attempt whose reload ended before the kill is repeated."""
    router = RouterProcess(tmp_path / "router", router_config(tmp_path)).start(60)
    try:
        for attempt in range(1, 4):
            applied = router.log().count("applied the reloaded config: 1 destinations")
            reloaded = router.log().count("config reloaded from")
            config = yaml.safe_load(router.config_path.read_text())
            # A destination change: the workers restart one by one, each awaited.
            config["destinations"]["out"]["path"] = str(tmp_path / f"out-{attempt}")
            router.config_path.write_text(yaml.safe_dump(config))
            old = router.child_pid("broker")
            assert router.process is not None
            router.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda a=applied: router.log().count(
                "applied the reloaded config: 1 destinations") > a, interval=0.01), \
                router.log()[-3000:]
            os.kill(old, signal.SIGKILL)
            if router.log().count("config reloaded from") > reloaded:
                router.await_ready(60)
                continue  # the reload was over already: no wait to tend
            assert wait_for(lambda r=reloaded: router.log().count("config reloaded from") > r,
                            timeout=90), router.log()[-3000:]
            log = router.log()
            assert log.rindex("started broker") < log.rindex("config reloaded from"), log[-3000:]
            assert "did not connect to the broker" not in log, log[-3000:]
            break
        else:
            pytest.fail("every reload ended before the broker was killed:\n" + router.log()[-3000:])
        router.await_ready(60)
    finally:
        router.stop()
