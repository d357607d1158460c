"""The web console in a real headless Chromium (Debian's package, driven by Playwright; no
browser is downloaded): log in, watch a transfer in progress, pause and resume a
destination, replay a dead letter, run the rule tester with a file.

With DICOM_ROUTER_SCREENSHOTS=1 the overview and the dead-letter page are saved to docs/
(docs/console-overview.png, docs/console-dead-letters.png) for the README.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage

from tests.dcmtk import LOCALHOST, StoreSCP, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, JPEG_BASELINE, dataset_digest, write_instance
from tests.integration import pdus
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.console_client import PASSWORDS, console_users
from tests.integration.router_process import RouterProcess, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = bool(os.environ.get("DICOM_ROUTER_SCREENSHOTS"))
STORAGE_CONTEXT = 3  # CT Image Storage in pdus.DEFAULT_CONTEXTS


@pytest.fixture
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        tab.on("dialog", lambda dialog: dialog.accept())  # the actions' confirmations
        errors: list[str] = []  # script errors and Content-Security-Policy violations
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
        assert not [e for e in errors if "401" not in e], errors


def base(router: RouterProcess) -> str:
    return f"http://127.0.0.1:{router.metrics_port}"


def log_in(page: Any, router: RouterProcess, user: str = "alice") -> None:
    page.goto(base(router) + "/console/")
    assert page.url.endswith("/console/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button:has-text('Log in')")
    page.wait_for_url("**/console/")


def console_config(destinations: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {"destinations": destinations,
            "rules": [{"name": "all", "forward": [next(iter(destinations))]}],
            "console": {"enabled": True, "users": console_users()}}


def test_log_in_and_watch_a_transfer_in_progress(start_router: RouterFactory, storescp: Any,
                                                 page: Any, tmp_path: Path) -> None:
    pacs: StoreSCP = storescp("PACS")
    router = start_router(console_config({"pacs": dicom_destination(pacs)}, tmp_path))
    sent = run_storescu([write_instance(tmp_path / "src", sop_class=CTImageStorage,
                                        transfer_syntax=EXPLICIT_VR_LE)],
                        LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert sent.returncode == 0, sent.stderr
    log_in(page, router)
    # A slow sender: half of a large C-STORE dataset arrives, the rest is held back.
    conn = pdus.RawAssociation("127.0.0.1", router.port, timeout=30)
    try:
        conn.associate(called_ae="DICOM-ROUTER", calling_ae="SLOW_MODALITY", max_pdu=65536)
        conn.accepted_context(STORAGE_CONTEXT)
        conn.send(pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, pdus.c_store_rq("1.2.3.4.5"),
                                           command=True)]))
        for _ in range(40):
            conn.send(pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, b"\0" * 15_000,
                                               command=False, last=False)]))
        row = page.locator("#associations tr", has_text="SLOW_MODALITY")
        row.wait_for()
        assert row.locator("progress").count() == 1
        assert "585.9 KB" in row.inner_text()  # 600,000 bytes so far
        page.locator("#destinations tr", has_text="pacs").wait_for()
        assert wait_for(lambda: "1/1" in page.locator("#destinations").inner_text()
                        or "0/1" in page.locator("#destinations").inner_text(), timeout=10)
        if SCREENSHOTS:  # wait for a second history point, so the charts have a line
            wait_for(lambda: page.evaluate(
                "(document.querySelector('#chart-queue polyline')?.getAttribute('points')"
                " || '').split(' ').length >= 2"), timeout=30, interval=1)
            page.screenshot(path=str(DOCS / "console-overview.png"), full_page=True)
    finally:
        conn.close()
    assert wait_for(lambda: not page.locator("#associations tr",
                                             has_text="SLOW_MODALITY").count())


def test_pause_resume_and_replay_a_dead_letter(start_router: RouterFactory, storescp: Any,
                                               page: Any, tmp_path: Path) -> None:
    jpeg = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                          transfer_syntax=JPEG_BASELINE)
    with StoreSCP(tmp_path / "STRICT", "STRICT", extra_args=["+x="]) as strict:
        lenient: StoreSCP = storescp("LENIENT")
        router = start_router(console_config({"strict": dicom_destination(strict),
                                              "lenient": dicom_destination(lenient)},
                                             tmp_path))
        log_in(page, router)
        page.goto(base(router) + "/console/destinations")
        row = page.locator("tr:has(td:first-child:text-is('lenient'))")
        row.locator("button:has-text('Pause')").click()
        page.locator(".flash", has_text="lenient paused").wait_for()
        assert "paused by operator" in row.inner_text()
        row.locator("button:has-text('Resume')").click()
        page.locator(".flash", has_text="lenient resumed").wait_for()
        assert "paused" not in row.locator(".state").inner_text()

        sent = run_storescu([jpeg], LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr

        def listed() -> bool:
            page.goto(base(router) + "/console/dead-letters?destination=strict")
            return page.locator("table.letters tbody tr").count() == 1

        assert wait_for(listed, timeout=30, interval=0.5), router.log()[-2000:]
        assert "transcode" in page.locator("table.letters").inner_text()
        if SCREENSHOTS:
            page.screenshot(path=str(DOCS / "console-dead-letters.png"), full_page=True)
        page.locator("table.letters tbody a").first.click()
        page.select_option("select[name=to]", "lenient")
        page.click("button:has-text('Replay')")
        page.locator(".flash", has_text="1 dead letter(s) replayed to lenient").wait_for()
        assert wait_for(lambda: len(lenient.received_files()) == 1), router.log()[-2000:]
        assert {dataset_digest(p) for p in lenient.received_files()} == {dataset_digest(jpeg)}


def test_rule_tester_with_a_file(start_router: RouterFactory, page: Any,
                                 tmp_path: Path) -> None:
    router = start_router(console_config(
        {"archive": {"type": "folder", "path": str(tmp_path / "archive")}}, tmp_path))
    instance = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE)
    log_in(page, router, "victor")  # a viewer may test rules: it changes nothing
    page.goto(base(router) + "/console/rules")
    assert "store-everything" not in page.content() and "archive" in page.content()
    page.set_input_files("input[type=file]", str(instance))
    page.fill("input[name=calling_ae]", "CT_SCANNER")
    page.click("button:has-text('Test')")
    result = page.locator("#tester-result")
    result.wait_for()
    text = result.inner_text()
    assert "as CT_SCANNER -> DICOM-ROUTER" in text and "rules matched: all" in text
    assert "-> archive (folder)" in text and "stored as" in text
