"""The `dicom-router` command as an operator uses it: check-config, run, stop."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.dcmtk import LOCALHOST, StoreSCP, free_port, free_ports, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.conftest import RouterFactory
from tests.integration.pdus import IMPLICIT_VR_LE, VERIFICATION, RawAssociation
from tests.integration.router_process import ROUTER, RouterProcess, http_get, wait_for

pytestmark = pytest.mark.integration


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          check=False)


def test_check_config_prints_a_summary_for_a_good_file(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "destinations:\n  archive: {type: folder, path: received}\n"
        "rules:\n  - {name: all, forward: [archive]}\n"
    )
    for args in (["check-config", str(config)], ["--config", str(config), "check-config"],
                 ["check-config", "--config", str(config)]):  # --config, as every command
        result = _cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith("ok: AE DICOM-ROUTER")
        assert "1 destinations, 1 rules" in result.stdout
    for args, message in ((["check-config"], "name the config file"),
                          (["check-config", "--config", "a.yaml", "b.yaml"], "two config")):
        result = _cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_check_config_lists_every_problem_with_its_key(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "ae_titel: X\n"
        "listen: {port: 99999}\n"
        "destinations:\n  pacs: {type: dicom, ae_title: PACS, host: h}\n"
        "rules:\n  - {name: ct, match: {tags: {Modalty: CT}}, forward: [pcas]}\n"
    )
    result = _cli("check-config", str(config))
    assert result.returncode == 1
    for expected in ("ae_titel: unknown key", "listen.port:",
                     "destinations.pacs.port: Field required",
                     "rules[0].match.tags: 'Modalty' is not a DICOM keyword",
                     "rules[0].forward: unknown destination 'pcas'"):
        assert expected in result.stderr, result.stderr



def test_an_audit_trail_that_cannot_be_written_stops_check_config_and_run(
        tmp_path: Path) -> None:
    """audit.path where no file can be made (here its parent is a file: ENOTDIR; a read-only
    filesystem gives EROFS): before, both went on and every audit message was lost."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    port, metrics_port = free_ports(2)
    config = tmp_path / "router.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"metrics: {{host: 127.0.0.1, port: {metrics_port}}}\n"
        f"audit: {{enabled: true, path: {blocker / 'audit.jsonl'}}}\n"
        "destinations:\n  archive: {type: folder, path: received}\n"
        "rules:\n  - {name: all, forward: [archive]}\n"
    )
    for args in (["check-config", str(config)], ["run", "--config", str(config)]):
        process = subprocess.Popen([*ROUTER, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=30)
        finally:  # a router that started anyway
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode == 1, (args, stderr)
        assert "audit.path: cannot write" in stderr, (args, stderr)
        assert "Not a directory" in stderr and "Traceback" not in stderr


def test_check_config_refuses_a_count_past_its_ceiling_without_a_traceback(
        tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "queue: {max_jobs: 100000000000}\n"
        "destinations:\n  archive: {type: folder, path: received, max_parallel: 100000000}\n"
        "rules:\n  - {name: all, forward: [archive]}\n"
    )
    result = _cli("check-config", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for expected in ("destinations.archive.max_parallel: must be between 1 and 256, "
                     "not 100000000",
                     "queue.max_jobs: must be between 1 and 10000000, not 100000000000"):
        assert expected in result.stderr, result.stderr

def test_run_refuses_a_broken_config_without_starting(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("rules: [}\n")
    result = _cli("run", "--config", str(config))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_sigterm_stops_every_process_cleanly(tmp_path: Path) -> None:
    router = RouterProcess(tmp_path, {
        "workers": 2,
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    }).start()
    assert router.process is not None
    children = _children(router.process.pid)
    assert len(children) >= 4, children  # broker, 2 workers, acceptor (spawn may add a tracker)

    assert router.stop() == 0, router.log()[-2000:]
    assert wait_for(lambda: not any(_alive(pid) for pid in children), timeout=10)
    assert "router stopped" in router.log()


def test_default_config_receives_on_11112_into_received(tmp_path: Path) -> None:
    """What `make run` does: no config, AE DICOM-ROUTER on 11112, files under ./received."""
    process = subprocess.Popen([*ROUTER, "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**os.environ})
    try:
        assert wait_for(lambda: _ready(9100), timeout=30), "default router never became ready"
        assert run_echoscu(LOCALHOST, 11112, called_ae="DICOM-ROUTER").returncode == 0
        source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax=EXPLICIT_VR_LE, study_uid="1.2.3",
                                series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
        sent = run_storescu([source], LOCALHOST, 11112, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        target = tmp_path / "received" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
        assert wait_for(target.exists, timeout=30)
        assert (tmp_path / "spool" / "jobs").is_dir()  # the README says ./spool
        _readme_try_it_works(tmp_path)
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            assert process.wait(30) == 0
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def _readme_blocks(after: str, count: int) -> list[list[str]]:
    """The command lines of the first `count` ```sh blocks after the line `after`."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rest = text[text.index(after):]
    blocks = re.findall(r"```sh\n(.*?)```", rest, re.S)[:count]
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
            for block in blocks]


def _readme_try_it_works(tmp_path: Path) -> None:
    """The README's 'try it' commands, exactly as written, against the default router, with
    `some/folder` holding an uncompressed and a JPEG-LS instance (the syntax storescu -R
    alone cannot propose: only `dicom-router send` is run on it)."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "some" / "folder"
    plain = write_instance(folder, sop_class="1.2.840.10008.5.1.4.1.1.2",
                           transfer_syntax=EXPLICIT_VR_LE)
    ours, dcmtk = _readme_blocks("Try it from another terminal", 2)
    assert any(line.startswith(".venv/bin/dicom-router send") for line in ours), ours
    # As in a fresh shell: not the venv's bin, where pynetdicom's own storescu would win.
    venv_bin = str(Path(CONSOLE_SCRIPT).parent)
    path = [d for d in os.environ["PATH"].split(":") if d != venv_bin]
    env = {**os.environ, "PATH": ":".join(path)}
    for line in dcmtk:  # DCMTK: the uncompressed instance only
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
    jls = Path(str(get_testdata_file("JPEGLSNearLossless_16.dcm")))
    (folder / jls.name).write_bytes(jls.read_bytes())
    for line in ours:
        command = line.replace(".venv/bin/dicom-router", CONSOLE_SCRIPT)
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
    jls_uid = "1.2.826.0.1.3680043.8.498.83170309094709282338053441269889264103"

    def received() -> set[str]:
        return {p.name for p in (tmp_path / "received").rglob("*.dcm")}

    assert wait_for(lambda: received() >= {plain.name, f"{jls_uid}.dcm"}, timeout=30), received()


def _ready(port: int) -> bool:
    try:
        return http_get(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_health_endpoints(tmp_path: Path) -> None:
    with RouterProcess(tmp_path, {
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    }) as router:
        assert http_get(router.metrics_port, "/healthz") == (200, "ok\n")
        assert http_get(router.metrics_port, "/readyz") == (200, "ready\n")
        assert http_get(router.metrics_port, "/nope")[0] == 404
        assert "dicom_router_build_info" in router.metrics()
        # Not ready while no worker is connected to the broker (a worker still importing
        # at start, or stalled): a relayed C-FIND would be refused with 0xA700 then.
        workers = [router.child_pid(f"worker-{n}") for n in range(2)]
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 503,
                            timeout=60)
            assert "no worker is connected" in http_get(router.metrics_port, "/readyz")[1]
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 200, timeout=60)




# --- a newcomer's first hour (issue 15): one convention for every command -------------------

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("dicom-router"))


def _script(*args: str, cwd: Path | None = None, stdin: str = ""
            ) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run([CONSOLE_SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, input=stdin, check=False)


def _spool_config(tmp_path: Path) -> Path:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "spool": {"path": str(tmp_path / "spool")},
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}]}))
    return config


def _one_dead_letter(tmp_path: Path, job_id: str) -> None:
    from router.core.spool import Spool
    from tests.unit.helpers import make_header

    spool = Spool(tmp_path / "spool").create()
    spool.instance_path(job_id).write_bytes(b"instance")
    spool.dead_letter(make_header(job_id, ("archive",)), "archive",
                      {"reason": "rejected", "detail": "said no", "attempts": 3,
                       "failed_at": 1.0})


def test_bad_input_is_one_line_and_exit_2_for_every_command(tmp_path: Path) -> None:
    config = _spool_config(tmp_path)
    _one_dead_letter(tmp_path, "0000000000000001aaaaaaaa")
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax=EXPLICIT_VR_LE)
    bad = {
        "age": ["dead-letters", "list", "--older-than", "2x", "--config", str(config)],
        "negative age": ["dead-letters", "purge", "--newer-than", "-1h"],
        "unknown letter": ["dead-letters", "show", "ffff0000ffff0000", "--config", str(config)],
        "path letter": ["dead-letters", "show", "/etc/passwd", "--config", str(config)],
        "replay target": ["dead-letters", "replay", "--to", "nowhere", "--config", str(config)],
        "purge unfiltered": ["dead-letters", "purge", "--config", str(config)],
        "send address": ["send", str(source), "--to", "localhost"],
        "send nobody": ["send", str(source), "--to", f"127.0.0.1:{free_port()}", "--quiet"],
        "send tls": ["send", str(source), "--to", "127.0.0.1:1", "--tls-cert", "x"],
        "echo port": ["echo", "127.0.0.1", "99999"],
        "echo nobody": ["echo", "127.0.0.1", str(free_port())],
        "status interval": ["status", "--interval", "often"],
        # Found by a tester: a socket.gaierror traceback (echo), exit 1 instead of 2 (send).
        "echo no such host": ["echo", "nosuchhost.invalid", "24999"],
        "send no such host": ["send", str(source), "--to", "nosuchhost.invalid:24999",
                              "--quiet"],
        # An OverflowError traceback from time.sleep (inf, 1e300); a negative one passed.
        "status infinite": ["status", "--interval", "inf", "--once", "--url", "127.0.0.1:24999"],
        "status huge": ["status", "--interval", "1e300", "--once", "--url", "127.0.0.1:24999"],
        "status negative": ["status", "--interval", "-1", "--once", "--url", "127.0.0.1:24999"],
        # Values no sender could present; every rule looked unmatched.
        "route-test source": ["route-test", str(source), "--source", "notanip"],
        "route-test calling": ["route-test", str(source), "--calling-ae", "A" * 17],
        "unknown command": ["frobnicate"],
    }
    for name, args in bad.items():
        done = _script(*args, cwd=tmp_path)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        assert done.returncode == 2, (name, done.returncode, done.stdout, done.stderr)
        assert done.stderr.startswith(("dicom-router", "usage: dicom-router")), (name, done.stderr)
    empty = _script("hash-passcode", stdin="\n")
    assert empty.returncode == 2 and "Traceback" not in empty.stderr, empty.stderr
    assert "dicom-router: error: empty passcode" in empty.stderr


def test_a_closed_stdout_ends_a_command_quietly(start_router: RouterFactory,
                                                tmp_path: Path) -> None:
    """Regression: `route-test ... | head -1` and `destinations list | head -1` ended with a
    BrokenPipeError traceback; a Unix tool stops quietly when its reader goes away."""
    router = start_router({"destinations": {"archive": {"type": "folder",
                                                        "path": str(tmp_path / "a")}},
                           "rules": [{"name": "all", "forward": ["archive"]}]})
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax=EXPLICIT_VR_LE)
    for args in (["route-test", str(source), str(source)],
                 ["destinations", "list", "--config", str(router.config_path)]):
        # The reader is gone before the command writes: every write meets EPIPE.
        with subprocess.Popen([CONSOLE_SCRIPT, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as process:
            assert process.stdout is not None and process.stderr is not None
            process.stdout.close()
            stderr = process.stderr.read().decode()
            returncode = process.wait(timeout=60)
        assert stderr == "", (args, stderr)
        assert returncode == 128 + signal.SIGPIPE, (args, returncode)


def test_config_goes_before_or_after_the_action_and_ids_as_logged(tmp_path: Path) -> None:
    config = _spool_config(tmp_path)
    job = "0000000000000002bbbbbbbb"
    _one_dead_letter(tmp_path, job)
    for args in (["dead-letters", "list", "--config", str(config)],
                 ["dead-letters", "--config", str(config), "list"],
                 ["--config", str(config), "dead-letters", "list"]):
        listed = _script(*args, cwd=tmp_path)
        assert listed.returncode == 0, (args, listed.stderr)
        assert f"{job}.archive" in listed.stdout and "1 dead letters" in listed.stdout
    # The broker logs "gave up delivering job <job> to archive: ...; dead letter <path>".
    record = tmp_path / "spool" / "dead-letters" / f"{job}.archive.json"
    for given in (job, f"{job}.archive", str(record)):
        shown = _script("dead-letters", "show", given, "--config", str(config), cwd=tmp_path)
        assert shown.returncode == 0, (given, shown.stderr)
        assert '"destination": "archive"' in shown.stdout
    route = _script("route-test", "--config", str(config), str(record), cwd=tmp_path)
    assert "Traceback" not in route.stderr and "--config" not in route.stderr


def test_version() -> None:
    done = _script("--version")
    assert done.returncode == 0
    assert re.fullmatch(r"dicom-router \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("rules: [}\n")
    for args in (["check-config", str(config)], ["run", "--config", str(config)],
                 ["dead-letters", "list", "--config", str(config)]):
        done = _script(*args, cwd=tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert f'in "{config}", line 1' in done.stderr, done.stderr
        assert "<unicode string>" not in done.stderr


def test_echo_answers_success_from_the_router(tmp_path: Path) -> None:
    with RouterProcess(tmp_path, {
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    }) as router:
        done = _script("echo", "127.0.0.1", str(router.port), "--calling-ae", "ECHO-TEST",
                       "--called-ae", "DICOM-ROUTER")
        assert done.returncode == 0, done.stderr
        assert "Success" in done.stdout
        strict = _script("echo", "127.0.0.1", str(router.port), "--called-ae", "SOMEONE-ELSE")
        assert "Traceback" not in strict.stderr
        assert strict.returncode in (0, 2), strict.stderr  # 2 when the AE title is required


# --- ports that cannot be bound (issue 15) ---------------------------------------------------

def _listening(port: int) -> socket.socket:
    sock = socket.socket()
    # As the router's listeners: a TIME_WAIT or an outgoing connection using this port
    # number must not make the test fail; only a listening socket blocks the router.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _grab(port: int, held: list[socket.socket]) -> bool:
    try:
        held.append(_listening(port))
    except OSError:  # the killed acceptor's socket may take a moment to go
        return False
    return True


@pytest.mark.parametrize("taken", ["dicom", "metrics"])
def test_a_taken_port_stops_the_router_at_start_naming_it(tmp_path: Path, taken: str) -> None:
    router = RouterProcess(tmp_path, {
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    port = router.port if taken == "dicom" else router.metrics_port
    with _listening(port):
        done = _script("run", "--config", str(router.config_path), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot listen for {'DICOM' if taken == 'dicom' else 'metrics'}" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "Address already in use" in done.stderr
    assert "started " not in done.stderr, "a child was spawned before the ports were checked"


def test_an_acceptor_that_cannot_bind_later_stops_the_router(tmp_path: Path) -> None:
    """The port is taken while the only acceptor is down (the supervisor closed its socket):
    no restart loop, a message, exit 1. With more acceptors the others hold the port."""
    router = RouterProcess(tmp_path, {
        "listen": {"acceptors": 1},
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    }).start()
    assert router.process is not None
    held: list[socket.socket] = []
    kills = 0
    try:
        # The port is free between the supervisor noticing the death and the restart: kill
        # again until the test's listener got in there.
        while not held and kills < 10:
            acceptor = router.child_pid("acceptor-1")
            os.kill(acceptor, signal.SIGKILL)
            kills += 1
            wait_for(lambda: _grab(router.port, held)
                     or router.child_pid("acceptor-1") != acceptor,  # noqa: B023
                     timeout=15, interval=0.002)
        assert held, f"the port never came free after {kills} kills"
        with held[0]:
            code = router.process.wait(60)
    finally:
        router.stop()
    log = router.log()
    assert code == 1, log[-3000:]
    assert f"acceptor-1 cannot listen on 127.0.0.1:{router.port}" in log, log[-3000:]
    assert "Address already in use" in log, log[-3000:]
    # Started once per kill but the last: the supervisor found the port taken, and stopped.
    assert len(re.findall(r"started acceptor-1", log)) == kills, log[-3000:]


# --- one router per spool -----------------------------------------------------------------


def test_a_second_router_on_the_same_spool_is_refused_and_the_first_loses_nothing(
        tmp_path: Path) -> None:
    """A second router started with the first one's spool.path (other ports) removed the
    first's live journal segment at its start: after a kill -9 and restart the first had lost
    a job it had acknowledged. Now it exits at once, naming the spool and the holder."""
    instances = [write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax=EXPLICIT_VR_LE) for _ in range(3)]
    pacs = StoreSCP(tmp_path / "pacs", "PACS", port=free_port())  # down until the end
    config = {"destinations": {"pacs": {"type": "dicom", "ae_title": "PACS",
                                        "host": LOCALHOST, "port": pacs.port}},
              "rules": [{"name": "all", "forward": ["pacs"]}]}
    first = RouterProcess(tmp_path / "first", config).start()
    try:
        sent = run_storescu(instances, LOCALHOST, first.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        journal = sorted((first.spool / "journal").iterdir())
        second = RouterProcess(tmp_path / "second",
                               {**config, "spool": {"path": str(first.spool)}})
        done = _script("run", "--config", str(second.config_path), cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        pid = first.process.pid if first.process else 0
        assert f"is in use by another router (pid {pid})" in done.stderr, done.stderr
        assert "started " not in done.stderr, "a child was spawned on a spool in use"
        assert sorted((first.spool / "journal").iterdir()) == journal
        first.kill_all()
        first.start()
        with pacs:
            assert wait_for(lambda: len(pacs.received_files()) == 3, timeout=90), \
                first.log()[-3000:]
    finally:
        first.stop()


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's new parent may reap it late, or never here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def test_a_router_restarted_after_its_supervisor_alone_was_killed_waits_for_its_children(
        tmp_path: Path) -> None:
    """kill -9 of the supervisor alone leaves its children draining (an acceptor with an
    association, for drain_grace); router.lock died with it, and a router restarted at once
    started beside them on the same spool. Now it waits until they are gone, then delivers
    what the first acknowledged."""
    instances = [write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax=EXPLICIT_VR_LE) for _ in range(3)]
    pacs = StoreSCP(tmp_path / "pacs", "PACS", port=free_port())  # down until the end
    router = RouterProcess(tmp_path / "router", {
        "drain_grace": 6, "listen": {"acceptors": 1},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS",
                                  "host": LOCALHOST, "port": pacs.port}},
        "rules": [{"name": "all", "forward": ["pacs"]}]}).start()
    first = router.process
    assert first is not None
    try:
        sent = run_storescu(instances, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        old = [router.child_pid(name) for name in ("broker", "worker-0", "acceptor-1")]
        with RawAssociation(LOCALHOST, router.port) as held:  # keeps the old acceptor up
            held.associate(contexts=[(1, VERIFICATION, (IMPLICIT_VR_LE,))])
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            router.launch()  # systemd's Restart=always: at once, same config and spool
            while any(_alive(pid) for pid in old):
                assert router.log().count("started broker") == 1, \
                    f"a new router started beside {old}:\n{router.log()[-3000:]}"
                assert router.process is not None and router.process.poll() is None, \
                    router.log()[-3000:]
                time.sleep(0.05)
        assert "waiting up to" in router.log() and str(old[0]) in router.log()
        router.await_ready(60)
        with pacs:
            assert wait_for(lambda: len(pacs.received_files()) == 3, timeout=90), \
                router.log()[-3000:]
    finally:
        router.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # the old children, whatever happened


def test_dead_letter_purge_and_replay_from_the_cli_are_audited(tmp_path: Path) -> None:
    """The API's purge and replay were audited, the command line's were not: an instance
    (patient data) could be deleted from the spool with no trace in the audit trail."""
    config = _spool_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    trail = tmp_path / "audit.jsonl"
    data["audit"] = {"enabled": True, "path": str(trail)}
    config.write_text(yaml.safe_dump(data))
    _one_dead_letter(tmp_path, "0000000000000001aaaaaaaa")
    _one_dead_letter(tmp_path, "0000000000000002bbbbbbbb")
    replay = _script("dead-letters", "replay", "0000000000000001aaaaaaaa", "--config",
                     str(config))
    assert replay.returncode == 0, replay.stderr
    purge = _script("dead-letters", "purge", "--all", "--config", str(config))
    assert purge.returncode == 0, purge.stderr
    records = [json.loads(line)["AuditMessage"] for line in trail.read_text().splitlines()]
    assert len(records) == 2
    details = [r["EventIdentification"]["EventOutcomeDescription"] for r in records]
    assert details[0].startswith("dead letters replay: 1 dead letter(s) replayed: ")
    assert "0000000000000001aaaaaaaa" in details[0]
    assert details[1].startswith("dead letters purge: 1 dead letter(s) purged: ")
    assert "0000000000000002bbbbbbbb" in details[1]
    for record in records:
        assert record["EventIdentification"]["EventOutcomeIndicator"] == "0"
        operator = record["ActiveParticipant"][0]
        assert operator["UserID"] == f"cli:{getpass.getuser()}" and operator["UserIsRequestor"]
