"""The router core end to end: real `dicom-router run` processes between real DCMTK peers."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, MRImageStorage
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from router.core.recycling import RESCAN_SECONDS
from tests.dcmtk import LOCALHOST, StoreSCP, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, dataset_digest, generate_mixed_set, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, RouterProcess, wait_for

pytestmark = pytest.mark.integration

StoreSCPFactory = Callable[[str], StoreSCP]


def _digests(paths: list[Path]) -> dict[str, Path]:
    return {dataset_digest(p): p for p in paths}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file()) if folder.exists() else []


def _delivered(router: RouterProcess, destination: str) -> float:
    return router.metric("dicom_router_instances_forwarded_total", destination=destination,
                         result="delivered")


def _send(router_port: int, files: list[Path], calling_ae: str = "STORESCU") -> str:
    result = run_storescu(files, LOCALHOST, router_port, called_ae="DICOM-ROUTER",
                          calling_ae=calling_ae, extra_args=["-nh"])
    return result.stdout + result.stderr


def _with_sop_instance_uid(path: Path, uid: str) -> Path:
    """Rewrite a sample with a hostile SOP Instance UID (also in its file meta)."""
    ds = dcmread(path)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    hostile = path.with_name("hostile.dcm")
    ds.save_as(hostile)
    return hostile


def test_echo_is_answered(start_router: RouterFactory, tmp_path: Path) -> None:
    router = start_router({
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    })
    result = run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert result.returncode == 0, result.stderr
    assert router.metric("dicom_router_dimse_requests_total",
                         command="C-ECHO", status="0x0000") == 1


def test_mixed_instances_arrive_byte_identical(
    start_router: RouterFactory, storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    """A few hundred instances of mixed SOP classes and syntaxes, and a large multi-frame."""
    sources = generate_mixed_set(tmp_path / "src", 300)
    sources.append(write_instance(tmp_path / "big", sop_class=EnhancedCTImageStorage,
                                  transfer_syntax=EXPLICIT_VR_LE, size_bytes=30_000_000,
                                  frames=50))
    pacs = storescp("PACS")
    router = start_router({"destinations": {"pacs": dicom_destination(pacs)},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})

    output = _send(router.port, sources)
    assert router.metric("dicom_router_instances_received_total", result="accepted") == len(
        sources), output

    # storescp answers a C-STORE only once its file is written: wait for every answer.
    assert wait_for(lambda: router.metric("dicom_router_instances_forwarded_total",
                                          destination="pacs", result="delivered") == len(sources),
                    timeout=120), (
        f"{len(pacs.received_files())} of {len(sources)} arrived\n{router.log()[-3000:]}")
    received = _digests(pacs.received_files())
    missing = [p.name for p in sources if dataset_digest(p) not in received]
    assert missing == [], f"changed or lost in transit: {missing[:5]}"
    # Every job is settled and removed from the spool once delivered.
    jobs = router.spool / "jobs"
    assert wait_for(lambda: not any(jobs.iterdir()), timeout=30), sorted(jobs.iterdir())[:5]
    assert router.metric("dicom_router_instances_forwarded_total",
                         destination="pacs", result="delivered") == len(sources)


def test_settled_files_are_written_over_and_every_instance_arrives_intact(
    start_router: RouterFactory, storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    """Once jobs settle, new C-STOREs are written over their files (the spool's recycle/)
    instead of new ones: later instances, shorter and longer than the files they reuse,
    arrive byte-identical, with nothing of an earlier instance left in them."""
    first = generate_mixed_set(tmp_path / "first", 40, size_bytes=12_000)
    later = [*generate_mixed_set(tmp_path / "shorter", 30, size_bytes=2_000),
             *generate_mixed_set(tmp_path / "longer", 30, size_bytes=40_000)]
    pacs = storescp("PACS")
    # No disk watermark: on a disk with less than twice its free space the pool is emptied
    # (rightly), and the count of files written over would depend on the machine's disk.
    router = start_router({"spool": {"path": str(tmp_path / "spool"), "min_free_bytes": 0,
                                     "min_free_percent": 0},
                           "destinations": {"pacs": dicom_destination(pacs)},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})
    jobs, pool = router.spool / "jobs", router.spool / "recycle"

    _send(router.port, first)
    assert wait_for(lambda: _delivered(router, "pacs") == len(first)), router.log()[-3000:]
    assert wait_for(lambda: not any(jobs.iterdir()), timeout=30)
    # On a slow machine early jobs settle while the batch still arrives, and its last
    # instances are written over their files already: each is one file fewer in the pool.
    reused_early = router.metric("dicom_router_spool_files_reused_total")
    pooled = len(first) - int(reused_early)
    assert wait_for(lambda: len(list(pool.iterdir())) == pooled, timeout=30)
    assert pooled > 0
    # An acceptor that found the pool empty looks again only after RESCAN_SECONDS.
    time.sleep(RESCAN_SECONDS + 0.3)

    _send(router.port, later)
    everything = [*first, *later]
    assert wait_for(lambda: _delivered(router, "pacs") == len(everything)), router.log()[-3000:]
    received = _digests(pacs.received_files())
    assert len(pacs.received_files()) == len(everything)
    missing = [p.name for p in everything if dataset_digest(p) not in received]
    assert missing == [], f"changed in transit: {missing[:5]}"
    # Every pooled file was written over by a later instance (60 of them, more than pooled).
    assert router.metric("dicom_router_spool_files_reused_total") - reused_early >= pooled
    assert wait_for(lambda: not any(jobs.iterdir()), timeout=30)


def test_fan_out_to_dicom_and_folder(
    start_router: RouterFactory, storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 12)
    pacs = storescp("PACS")
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"pacs": dicom_destination(pacs),
                         "archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "both", "forward": ["pacs", "archive"]}],
    })
    _send(router.port, sources)

    assert wait_for(lambda: _delivered(router, "pacs") == len(sources)
                    and _delivered(router, "archive") == len(sources)), router.log()[-3000:]
    assert set(_digests(pacs.received_files())) == {dataset_digest(p) for p in sources}
    assert set(_digests(_files(archive))) == {dataset_digest(p) for p in sources}


def test_folder_layout_is_study_series_instance_with_file_meta(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE, study_uid="1.2.3.4",
                            series_uid="1.2.3.4.5", sop_instance_uid="1.2.3.4.5.6")
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    _send(router.port, [source])

    target = archive / "1.2.3.4" / "1.2.3.4.5" / "1.2.3.4.5.6.dcm"
    assert wait_for(target.exists), router.log()[-2000:]
    stored = dcmread(target)
    assert stored.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5.6"
    assert stored.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE
    assert dataset_digest(target) == dataset_digest(source)


def test_rules_select_by_calling_ae_and_by_tag(
    start_router: RouterFactory, storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    ct_pacs, mr_pacs = storescp("CTPACS"), storescp("MRPACS")
    rest = tmp_path / "rest"
    router = start_router({
        "destinations": {"ct": dicom_destination(ct_pacs), "mr": dicom_destination(mr_pacs),
                         "rest": {"type": "folder", "path": str(rest)}},
        "rules": [
            {"name": "from-ct1", "match": {"calling_ae": ["CT1", "CT2"]}, "forward": ["ct"]},
            {"name": "mr-chest", "match": {"tags": {"Modality": "MR",
                                                    "StudyDescription": "re:^CHEST"}},
             "forward": ["mr"]},
            {"name": "rest", "forward": ["rest"]},
        ],
    })
    from_ct1 = write_instance(tmp_path / "a", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE)
    mr_chest = write_instance(tmp_path / "b", sop_class=MRImageStorage, modality="MR",
                              transfer_syntax=EXPLICIT_VR_LE,
                              tags={"StudyDescription": "CHEST PA"})
    mr_head = write_instance(tmp_path / "c", sop_class=MRImageStorage, modality="MR",
                             transfer_syntax=EXPLICIT_VR_LE, tags={"StudyDescription": "HEAD"})
    _send(router.port, [from_ct1], calling_ae="CT1")
    _send(router.port, [mr_chest, mr_head], calling_ae="MRSCANNER")

    assert wait_for(lambda: _delivered(router, "ct") == 1 and _delivered(router, "mr") == 1
                    and _delivered(router, "rest") == 1), router.log()[-3000:]
    assert set(_digests(ct_pacs.received_files())) == {dataset_digest(from_ct1)}
    assert set(_digests(mr_pacs.received_files())) == {dataset_digest(mr_chest)}
    assert set(_digests(_files(rest))) == {dataset_digest(mr_head)}


SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # sent by Siemens MR scanners


def _store_private(port: int, path: Path) -> int | None:
    """The C-STORE status, or None when the router refused the SOP class at negotiation."""
    ae = AE(ae_title="MR1")
    ae.add_requested_context(SIEMENS_CSA_NON_IMAGE, EXPLICIT_VR_LE)
    assoc = ae.associate(LOCALHOST, port, ae_title="DICOM-ROUTER")
    if not assoc.is_established:  # accepted, but not its one context: pynetdicom aborts
        assert not assoc.is_rejected
        return None
    try:
        return int(assoc.send_c_store(dcmread(path)).Status)
    finally:
        assoc.release()


# Regression (engine hunt): a vendor-private storage SOP class was refused at negotiation
# (result 3): a Siemens MR scanner could not send its CSA Non-Image instances at all.
def test_a_private_storage_class_is_refused_unless_listed_then_arrives_byte_identical(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    source = write_instance(tmp_path / "src", sop_class=SIEMENS_CSA_NON_IMAGE,
                            transfer_syntax=EXPLICIT_VR_LE, modality="MR")
    # -pm: a PACS that takes unknown SOP classes, as those of such sites do.
    with StoreSCP(tmp_path / "PACS", "PACS", extra_args=["-pm"]) as pacs:
        listen = {"host": "127.0.0.1"}
        router = start_router({"listen": listen,
                               "destinations": {"pacs": dicom_destination(pacs)},
                               "rules": [{"name": "all", "forward": ["pacs"]}]})
        assert _store_private(router.port, source) is None

        # listen.extra_storage_classes applies to new associations on reload.
        config = yaml.safe_load(router.config_path.read_text())
        config["listen"]["extra_storage_classes"] = [SIEMENS_CSA_NON_IMAGE]
        router.config_path.write_text(yaml.safe_dump(config))
        assert router.process is not None
        router.process.send_signal(signal.SIGHUP)
        statuses: list[int] = []

        def stored() -> bool:
            status = _store_private(router.port, source)
            statuses.extend([] if status is None else [status])
            return status is not None

        assert wait_for(stored), router.log()[-3000:]
        assert statuses == [0x0000]
        assert wait_for(lambda: _delivered(router, "pacs") == 1), router.log()[-3000:]
        [received] = pacs.received_files()
        assert dataset_digest(received) == dataset_digest(source)
        assert dcmread(received).SOPClassUID == SIEMENS_CSA_NON_IMAGE


def test_instance_matching_no_rule_is_refused_and_counted(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "only-ct1", "match": {"calling_ae": "CT1"}, "forward": ["archive"]}],
    })
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    result = run_storescu([source], LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                          calling_ae="STRANGER", extra_args=["-d"])

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "0xc002" in output.lower(), output  # the status, as the sender's log shows it
    assert "no routing rule matches" in output  # and the ErrorComment says why
    assert router.metric("dicom_router_instances_received_total", result="no_route") == 1
    assert _files(archive) == []
    assert list((router.spool / "jobs").iterdir()) == []


def test_an_unknown_vr_in_a_tag_rules_read_is_refused_as_unparsable(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """Regression: Modality with VR "ZZ" raised NotImplementedError out of pydicom while the
    acceptor read the tags for the rules: the sender got 0x0110 'router internal error' and
    the log a traceback, where README promises 0xC000."""
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "ct", "match": {"tags": {"Modality": "CT"}}, "forward": ["archive"]}],
    })
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    modality = b"\x08\x00\x60\x00CS\x02\x00CT"
    assert source.read_bytes().count(modality) == 1
    source.write_bytes(source.read_bytes().replace(modality, b"\x08\x00\x60\x00ZZ\x02\x00CT"))

    # `send` streams the file as it is; DCMTK's storescu would re-encode the element.
    done = subprocess.run([*ROUTER, "send", str(source), "--to", f"{LOCALHOST}:{router.port}"],
                          capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "0xC000" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Unknown Value Representation" in done.stdout + done.stderr
    assert "Traceback" not in router.log() and "0x0110" not in done.stdout + done.stderr
    assert _files(archive) == []


def test_hostile_uids_never_escape_the_folder(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    archive = tmp_path / "deep" / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    hostile_instance = _with_sop_instance_uid(
        write_instance(tmp_path / "a", sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE),
        "../../etc/x")
    hostile_study = write_instance(tmp_path / "b", sop_class=CTImageStorage,
                                   transfer_syntax=EXPLICIT_VR_LE, study_uid="../../../../x")

    refused = run_storescu([hostile_instance], LOCALHOST, router.port,
                           called_ae="DICOM-ROUTER", extra_args=["-v"])
    assert refused.returncode != 0
    assert router.metric("dicom_router_instances_received_total", result="invalid_uid") == 1

    # A hostile Study UID passes the acceptor (rules need no tags) but the folder destination
    # refuses to name a file with it: a dead letter an operator can see, nothing outside.
    _send(router.port, [hostile_study])
    assert wait_for(lambda: router.metric("dicom_router_dead_letters_total",
                                          destination="archive", reason="invalid_uid") == 1)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.name in ("x", "x.dcm")]
    assert outside == []
    assert _files(archive) == []
    assert len(list((router.spool / "dead-letters").glob("*.json"))) == 1


def test_stores_that_could_never_be_delivered_are_refused_at_once(
    start_router: RouterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regressions: a C-STORE whose dataset is not the instance its command names (DCMTK's
    storescp refuses it 0xA900), one whose dataset has no SOP UIDs (DCMTK: 0xC000) and one
    on the Verification context were answered Success, then dead-lettered downstream."""
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    files = {}
    for name, change in (("other", lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3.999.2")),
                         ("no_uids", lambda ds: (delattr(ds, "SOPInstanceUID"),
                                                 delattr(ds, "SOPClassUID"))),
                         ("verification", lambda ds: (
                             setattr(ds, "SOPClassUID", Verification),
                             setattr(ds.file_meta, "MediaStorageSOPClassUID", Verification)))):
        ds = dcmread(source)
        change(ds)
        files[name] = tmp_path / f"{name}.dcm"
        ds.save_as(files[name])  # the file meta (the command's UIDs) as it was
    # The file as it is: its meta names the command's UIDs, its dataset may differ.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
    ae.add_requested_context(Verification, EXPLICIT_VR_LE)
    assoc = ae.associate(LOCALHOST, router.port, ae_title="DICOM-ROUTER")
    assert assoc.is_established
    try:
        answers = {name: assoc.send_c_store(path) for name, path in
                   (*files.items(), ("good", source))}
    finally:
        assoc.release()
    statuses = {name: int(answer.Status) for name, answer in answers.items()}
    assert statuses == {"other": 0xA900, "no_uids": 0xC000, "verification": 0x0122,
                        "good": 0x0000}
    assert answers["other"].ErrorComment == \
        "Dataset does not match SOP Class (SOP Instance UID differs)"
    assert router.metric("dicom_router_instances_received_total", result="rejected") == 3
    assert wait_for(lambda: _delivered(router, "archive") == 1), router.log()[-3000:]
    assert [dcmread(p).SOPInstanceUID for p in _files(archive)] == [dcmread(source).SOPInstanceUID]
    assert list((router.spool / "dead-letters").glob("*.json")) == []
    assert list((router.spool / "incoming").iterdir()) == []
    assert "Traceback" not in router.log()
