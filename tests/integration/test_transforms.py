"""Morphing, de-identification, transcoding and DICOMweb through the real router, read back
from what the destinations received (DCMTK storescp, Orthanc's DICOMweb plugin)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import iter_pixels
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.compressed_samples import write_ambiguous_implicit, write_compressed, write_native
from tests.dcmtk import LOCALHOST, StoreSCP, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, dataset_digest, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import wait_for

pytestmark = pytest.mark.integration

AE = "DICOM-ROUTER"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path / "pacs", "PACS") as scp:  # one association at a time
        yield scp


def by_uid(files: list[Path]) -> dict[str, Any]:
    return {str(ds.SOPInstanceUID): ds for ds in (dcmread(f) for f in files)}


def instances(folder: Path, count: int, sop_class: str = CT, **tags: object) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    return [write_instance(folder, sop_class=sop_class, transfer_syntax=EXPLICIT_VR_LE,
                           size_bytes=4000, study_uid=study, series_uid=series,
                           tags={"InstanceNumber": i + 1, **tags})
            for i in range(count)]


# --- morphing ---------------------------------------------------------------------------------

def test_morphing_applies_and_untouched_instances_stay_byte_exact(
        start_router: RouterFactory, pacs: StoreSCP, tmp_path: Path) -> None:
    router = start_router({
        "destinations": {"pacs": {**dicom_destination(pacs), "morph": [
            {"action": "set", "tag": "InstitutionName", "value": "Router General"}]}},
        "rules": [
            {"name": "mr-accessions", "match": {"sop_class": MR}, "forward": ["pacs"],
             "morph": [
                 {"action": "prefix", "tag": "AccessionNumber", "value": "RAD-"},
                 {"action": "map", "tag": "StationName", "table": {"MR01": "MRI-EAST"}},
                 {"action": "delete", "tag": "OperatorsName"},
                 {"action": "set", "tag": "RequestAttributesSequence[0].RequestedProcedureID",
                  "value": "RP-9"}]},
            {"name": "rest", "forward": ["pacs"]}]})
    mr = instances(tmp_path / "mr", 3, MR, AccessionNumber="A100", StationName="MR01",
                   OperatorsName="Tech^One")
    assert run_storescu(mr, LOCALHOST, router.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 3)
    for ds in by_uid(pacs.received_files()).values():
        assert ds.AccessionNumber == "RAD-A100"
        assert ds.StationName == "MRI-EAST"
        assert "OperatorsName" not in ds
        assert ds.RequestAttributesSequence[0].RequestedProcedureID == "RP-9"
        assert ds.InstitutionName == "Router General"  # the destination's own morph, after
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not list((router.spool / "relay").iterdir()), "morphed copies left behind"


def test_a_morph_pattern_past_its_deadline_is_a_dead_letter_and_the_next_instance_arrives(
        start_router: RouterFactory, pacs: StoreSCP, tmp_path: Path) -> None:
    """Regression: a morph's replace ran with `re` and no deadline in the delivery thread;
    `^(a|aa)+$` on 60 a's and a b held it for ever, and the destination's queue with it.
    Cut at its deadline, that instance is a `morph` dead letter naming the rule, counted,
    and the next instance is morphed and delivered."""
    router = start_router({
        "destinations": {"pacs": dicom_destination(pacs)},
        "rules": [{"name": "tidy", "forward": ["pacs"], "morph": [
            {"action": "replace", "tag": "StudyDescription", "pattern": "^(a|aa)+$",
             "replacement": "A"}]}]})
    (slow,) = instances(tmp_path / "slow", 1, StudyDescription="a" * 60 + "b")
    (plain,) = instances(tmp_path / "plain", 1, StudyDescription="aaaa")
    for source in (slow, plain):
        sent = run_storescu([source], LOCALHOST, router.port, called_ae=AE)
        assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: len(pacs.received_files()) == 1), router.log()[-3000:]
    (received,) = by_uid(pacs.received_files()).values()
    assert received.SOPInstanceUID == dcmread(plain).SOPInstanceUID
    assert received.StudyDescription == "A"
    assert wait_for(lambda: router.metric("dicom_router_dead_letters_total", destination="pacs",
                                          reason="morph") == 1), router.log()[-3000:]
    assert router.metric("dicom_router_morph_pattern_timeouts_total", destination="pacs",
                         rule="tidy") == 1
    (dead,) = (router.spool / "dead-letters").glob("*.json")
    assert ("rule tidy: morph replace on StudyDescription: pattern took too long on this "
            "instance's value") in dead.read_text()
    assert router.metric_sum("dicom_router_retries_total") == 0  # cut once, never retried


def _dimse_priorities(scp: StoreSCP) -> list[str]:
    """The Priority of each C-STORE request storescp received, as its debug dump says."""
    return [line.rpartition(":")[2].strip() for line in scp.log().splitlines()
            if line.removeprefix("D: ").startswith("Priority ")]


def test_each_destination_gets_the_dimse_priority_of_the_rules_that_routed_it_there(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """Regression: a job took the most urgent of its matched rules' priorities, and that was
    the DIMSE Priority of every destination: the archive copy of a STAT instance, routed by
    a `low` rule, went out HIGH. Each destination now gets its own rules' priority."""
    with StoreSCP(tmp_path / "pacs", "PACS", extra_args=["-d"]) as pacs, \
            StoreSCP(tmp_path / "archive", "ARCHIVE", extra_args=["-d"]) as archive:
        router = start_router({
            "destinations": {"pacs": dicom_destination(pacs),
                             "archive": dicom_destination(archive)},
            "rules": [{"name": "copy-all", "continue": True, "forward": ["archive"],
                       "priority": "low"},
                      {"name": "stat", "forward": ["pacs"], "priority": "urgent"}]})
        sources = instances(tmp_path / "src", 2)
        assert run_storescu(sources, LOCALHOST, router.port, called_ae=AE).returncode == 0
        assert wait_for(lambda: len(pacs.received_files()) == 2
                        and len(archive.received_files()) == 2), router.log()[-3000:]
        assert _dimse_priorities(pacs) == ["high", "high"], pacs.log()
        assert _dimse_priorities(archive) == ["low", "low"], archive.log()


def test_no_morphing_means_byte_exact(start_router: RouterFactory, pacs: StoreSCP,
                                     tmp_path: Path) -> None:
    router = start_router({"destinations": {"pacs": dicom_destination(pacs)},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})
    sources = instances(tmp_path / "ct", 3)
    assert run_storescu(sources, LOCALHOST, router.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 3)
    assert sorted(dataset_digest(p) for p in pacs.received_files()) == \
        sorted(dataset_digest(p) for p in sources)


# --- de-identification ----------------------------------------------------------------------

def test_deidentified_study_keeps_consistent_uids(start_router: RouterFactory,
                                                  pacs: StoreSCP, tmp_path: Path) -> None:
    router = start_router({
        "destinations": {"research": dicom_destination(pacs)},
        "rules": [{"name": "research", "forward": ["research"], "deidentify": {}}]})
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    frame = generate_uid()
    sources = [write_instance(tmp_path / "s", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                              size_bytes=3000, study_uid=study, series_uid=series[i % 2],
                              tags={"PatientName": "Doe^Jane", "PatientID": "MRN123",
                                    "PatientBirthDate": "19700101", "AccessionNumber": "A9",
                                    "InstitutionName": "St Elsewhere",
                                    "FrameOfReferenceUID": frame, "InstanceNumber": i + 1})
               for i in range(6)]
    assert run_storescu(sources, LOCALHOST, router.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 6)
    received = [dcmread(p) for p in pacs.received_files()]
    originals = {str(dcmread(p).SOPInstanceUID) for p in sources}
    for ds in received:
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientName) != "Doe^Jane" and ds.PatientID != "MRN123"
        assert not ds.get("PatientBirthDate") and not ds.get("AccessionNumber")
        assert ds.get("InstitutionName") != "St Elsewhere"  # X/Z/D: removed, emptied or dummy
        assert str(ds.SOPInstanceUID) not in originals
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len({str(ds.StudyInstanceUID) for ds in received}) == 1  # one study still
    assert str(received[0].StudyInstanceUID) != study
    assert len({str(ds.SeriesInstanceUID) for ds in received}) == 2  # two series still
    assert len({str(ds.FrameOfReferenceUID) for ds in received}) == 1
    assert len({ds.PatientID for ds in received}) == 1  # one pseudonymous patient


def test_cells_sharing_a_key_file_make_one_study_of_one_pseudonymous_patient(
        start_router: RouterFactory, pacs: StoreSCP, tmp_path: Path) -> None:
    """Scaled out, each cell made its own key on its own spool: one study whose series came
    through two cells became two studies of two pseudonymous patients. With
    spool.deidentify_key_file naming one key file (a mounted Secret), the cells agree."""
    key = tmp_path / "deid.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    cells = [start_router({
        "destinations": {"research": dicom_destination(pacs)},
        "rules": [{"name": "research", "forward": ["research"], "deidentify": {}}],
        "spool": {"path": str(tmp_path / cell / "spool"), "deidentify_key_file": str(key)}})
        for cell in ("cell-a", "cell-b")]
    study = generate_uid()
    for number, cell in enumerate(cells, 1):
        source = write_instance(tmp_path / f"s{number}", sop_class=CT,
                                transfer_syntax=EXPLICIT_VR_LE, size_bytes=3000,
                                study_uid=study, series_uid=generate_uid(),
                                tags={"PatientName": "Doe^Jane", "PatientID": "MRN123",
                                      "InstanceNumber": number})
        assert run_storescu([source], LOCALHOST, cell.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 2)
    received = [dcmread(p) for p in pacs.received_files()]
    assert len({str(ds.StudyInstanceUID) for ds in received}) == 1
    assert str(received[0].StudyInstanceUID) != study
    assert len({ds.PatientID for ds in received}) == 1
    assert received[0].PatientID != "MRN123"
    assert not any((c.spool / "deid-secret.key").exists() for c in cells)


def test_a_later_rules_deidentify_applies_to_a_destination_an_earlier_rule_names(
        start_router: RouterFactory, storescp: Callable[..., StoreSCP],
        tmp_path: Path) -> None:
    """copy-all (continue: true) sends to pacs and research, research-deid to research with
    deidentify: before, research got the patient's name (only the first rule naming it
    counted). Now research's copy is de-identified and pacs's is the dataset as sent."""
    pacs, research = storescp("PACS"), storescp("RESEARCH")  # one association at a time
    router = start_router({
        "destinations": {"pacs": dicom_destination(pacs),
                         "research": dicom_destination(research)},
        "rules": [{"name": "copy-all", "continue": True, "forward": ["pacs", "research"]},
                  {"name": "research-deid", "match": {"tags": {"Modality": "CT"}},
                   "forward": ["research"], "deidentify": {}}]})
    sources = instances(tmp_path / "ct", 2, Modality="CT", PatientName="Doe^Jane",
                        PatientID="MRN123")
    assert run_storescu(sources, LOCALHOST, router.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 2
                    and len(research.received_files()) == 2), router.log()[-2000:]
    assert sorted(dataset_digest(p) for p in pacs.received_files()) == \
        sorted(dataset_digest(p) for p in sources)
    for ds in (dcmread(p) for p in research.received_files()):
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientName) != "Doe^Jane" and ds.PatientID != "MRN123"


# --- transcoding ------------------------------------------------------------------------------

@pytest.fixture
def explicit_only(tmp_path: Path) -> Iterator[StoreSCP]:
    """A PACS that accepts Explicit VR Little Endian only (storescp +xe... -xs? see below)."""
    with StoreSCP(tmp_path / "old-pacs", "OLDPACS", extra_args=["+xe"]) as scp:
        yield scp


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000Lossless, RLELossless])
def test_transcoding_for_a_destination_that_takes_only_explicit_le(
        start_router: RouterFactory, explicit_only: StoreSCP, tmp_path: Path,
        syntax: str) -> None:
    router = start_router({
        "destinations": {"old": {**dicom_destination(explicit_only),
                                 "transfer_syntaxes": ["ExplicitVRLittleEndian"]}},
        "rules": [{"name": "all", "forward": ["old"]}]})
    source = write_compressed(tmp_path / "src", syntax)
    sent = run_storescu([source], LOCALHOST, router.port, called_ae=AE)
    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: len(explicit_only.received_files()) == 1), router.log()[-2000:]
    got = dcmread(explicit_only.received_files()[0])
    original = dcmread(source)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == original.SOPInstanceUID
    decoded = original.pixel_array
    if syntax == JPEGBaseline8Bit:
        assert abs(got.pixel_array.astype(int) - decoded.astype(int)).mean() < 3
    else:
        assert (got.pixel_array == decoded).all()


def test_lossy_images_decoded_for_an_explicit_only_destination_say_they_were_lossy(
        start_router: RouterFactory, explicit_only: StoreSCP, tmp_path: Path) -> None:
    """A JPEG Baseline file stripped of Lossy Image Compression and pydicom's JPEG-LS
    near-lossless file (which never had it) arrived native with no (0028,2110): the syntax,
    their only record of a lossy step, was gone. They arrive with "01" and the method."""
    router = start_router({
        "destinations": {"old": {**dicom_destination(explicit_only),
                                 "transfer_syntaxes": ["ExplicitVRLittleEndian"]}},
        "rules": [{"name": "all", "forward": ["old"]}]})
    methods = {}
    for name, method in (("SC_rgb_jpeg_dcmtk.dcm", "ISO_10918_1"),
                         ("JPEGLSNearLossless_08.dcm", "ISO_14495_1")):
        ds = dcmread(get_testdata_file(name))
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio",
                        "LossyImageCompressionMethod"):
            ds.pop(keyword, None)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / name)
        methods[ds.SOPInstanceUID] = method
    sent = run_storescu([tmp_path / name for name in ("SC_rgb_jpeg_dcmtk.dcm",
                                                      "JPEGLSNearLossless_08.dcm")],
                        LOCALHOST, router.port, called_ae=AE)
    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: len(explicit_only.received_files()) == 2), router.log()[-2000:]
    for uid, ds in by_uid(explicit_only.received_files()).items():
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (ds.LossyImageCompression, ds.LossyImageCompressionMethod) == \
            ("01", methods[uid])


def test_an_encoder_failure_falls_back_to_the_next_accepted_syntax(
        start_router: RouterFactory, pacs: StoreSCP, tmp_path: Path) -> None:
    """openjpeg cannot encode images under 32 pixels (`opj_start_compress()`): with
    `transfer_syntaxes: [JPEG2000Lossless, RLELossless]` a 16x16 image became a `transcode`
    dead letter; it arrives as RLE, pixel for pixel."""
    router = start_router({
        "destinations": {"pacs": {**dicom_destination(pacs),
                                  "transfer_syntaxes": ["JPEG2000Lossless", "RLELossless"]}},
        "rules": [{"name": "all", "forward": ["pacs"]}]})
    small = write_native(tmp_path, "small.dcm", bits=16, rows=16, columns=16)
    large = write_native(tmp_path, "large.dcm", bits=16)  # openjpeg takes this one
    assert run_storescu([small, large], LOCALHOST, router.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 2), router.log()[-2000:]
    got = by_uid(pacs.received_files())
    for source, syntax in ((small, RLELossless), (large, JPEG2000Lossless)):
        original = dcmread(source)
        received = got[str(original.SOPInstanceUID)]
        assert received.file_meta.TransferSyntaxUID == syntax
        assert (received.pixel_array == original.pixel_array).all()
    assert router.metric("dicom_router_dead_letters_total", destination="pacs",
                         reason="transcode") == 0
    assert router.metric("dicom_router_transcode_fallbacks_total", cause="error") == 1


def test_an_odd_sized_rgb_image_arrives_in_rle_at_an_rle_only_destination(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """GDCM's RLE encoder, first in pydicom's order, abort()s on a 101x99 RGB image and took
    the codec process with it: a `transcode` dead letter. pydicom's own encodes it."""
    with StoreSCP(tmp_path / "rle-pacs", "RLEPACS", extra_args=["+xr"]) as rle:
        router = start_router({
            "destinations": {"rle": {**dicom_destination(rle),
                                     "transfer_syntaxes": ["RLELossless"]}},
            "rules": [{"name": "all", "forward": ["rle"]}]})
        source = write_native(tmp_path, "rgb.dcm", bits=8, colour=True, rows=101, columns=99)
        assert run_storescu([source], LOCALHOST, router.port, called_ae=AE).returncode == 0
        assert wait_for(lambda: len(rle.received_files()) == 1), router.log()[-2000:]
        got = dcmread(rle.received_files()[0])
        assert got.file_meta.TransferSyntaxUID == RLELossless
        assert (got.pixel_array == dcmread(source).pixel_array).all()
        assert "codec process died" not in router.log()


def test_an_instance_pydicom_cannot_transcode_is_a_transcode_dead_letter(
        start_router: RouterFactory, explicit_only: StoreSCP, tmp_path: Path) -> None:
    """Implicit VR with an ambiguous 'US or SS' element and no Pixel Representation: pydicom
    raises AttributeError (not a TranscodeError) whatever syntax is tried. It was an
    `internal` failure retried with backoff; it is a `transcode` dead letter at once."""
    router = start_router({
        "destinations": {"old": {**dicom_destination(explicit_only),
                                 "transfer_syntaxes": ["ExplicitVRLittleEndian"]}},
        "rules": [{"name": "all", "forward": ["old"]}]})
    source = write_ambiguous_implicit(tmp_path)
    sent = run_storescu([source], LOCALHOST, router.port, called_ae=AE)
    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: router.metric("dicom_router_dead_letters_total", destination="old",
                                          reason="transcode") == 1), router.log()[-3000:]
    assert "Failed to resolve ambiguous VR" in router.log()
    assert explicit_only.received_files() == []
    assert router.metric("dicom_router_retries_total", reason="internal") == 0


def test_transcoding_on_refusal_without_a_configured_list(
        start_router: RouterFactory, explicit_only: StoreSCP, tmp_path: Path) -> None:
    """No transfer_syntaxes: sent as is first; the refusal (no context) makes it transcode."""
    router = start_router({"destinations": {"old": dicom_destination(explicit_only)},
                           "rules": [{"name": "all", "forward": ["old"]}]})
    source = write_compressed(tmp_path / "src", RLELossless)
    assert run_storescu([source], LOCALHOST, router.port, called_ae=AE).returncode == 0
    assert wait_for(lambda: len(explicit_only.received_files()) == 1), router.log()[-2000:]
    got = dcmread(explicit_only.received_files()[0])
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (got.pixel_array == dcmread(source).pixel_array).all()


def test_a_refused_sop_class_is_a_dead_letter_naming_it_after_one_association(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """storescp refuses a private SOP class (result 3, abstract syntax not supported): the
    router proposed it again in Implicit VR, then dead-lettered it blaming that syntax. No
    syntax can help: one association, and the dead letter names the SOP class."""
    private = "1.2.826.0.1.3680043.10.777.1"
    with StoreSCP(tmp_path / "pacs", "PACS", extra_args=["-v"]) as pacs:
        router = start_router({"listen": {"extra_storage_classes": [private]},
                               "destinations": {"pacs": dicom_destination(pacs)},
                               "rules": [{"name": "all", "forward": ["pacs"]}]})
        source = write_instance(tmp_path / "src", sop_class=private,
                                transfer_syntax=EXPLICIT_VR_LE, size_bytes=3000)
        assert run_storescu([source], LOCALHOST, router.port, called_ae=AE).returncode == 0
        assert wait_for(lambda: router.metric("dicom_router_dead_letters_total",
                                              destination="pacs", reason="no_context") == 1), \
            router.log()[-2000:]
        [letter] = [json.loads(p.read_text())
                    for p in (router.spool / "dead-letters").glob("*.json")]
        assert letter["detail"].startswith(f"pacs does not support SOP class {private} "
                                           "(abstract syntax not supported)"), letter
        assert pacs.log().count("Association Acknowledged") == 1, pacs.log()


@pytest.mark.parametrize("configured",
                         [None, ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian"]])
def test_an_implicit_only_destination_gets_implicit_vr(
        start_router: RouterFactory, tmp_path: Path, configured: list[str] | None) -> None:
    """A PACS that takes Implicit VR Little Endian only (storescp +xi): without a list the
    refusal led to one retry, in Explicit, and every instance became a no_context dead
    letter; with `transfer_syntaxes: [Explicit, Implicit]` only the first was ever
    proposed. Each syntax it may take is tried in turn."""
    with StoreSCP(tmp_path / "implicit-pacs", "IMPL", extra_args=["+xi"]) as implicit:
        dest = dicom_destination(implicit)
        if configured:
            dest["transfer_syntaxes"] = configured
        router = start_router({"destinations": {"impl": dest},
                               "rules": [{"name": "all", "forward": ["impl"]}]})
        sources = [write_instance(tmp_path / "src", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                                  size_bytes=3000),
                   write_compressed(tmp_path / "src", RLELossless)]
        for source in sources:
            assert run_storescu([source], LOCALHOST, router.port, called_ae=AE).returncode == 0
        assert wait_for(lambda: len(implicit.received_files()) == 2), router.log()[-2000:]
        for path in implicit.received_files():
            got = dcmread(path)
            assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert router.metric("dicom_router_dead_letters_total", destination="impl",
                             reason="no_context") == 0


def test_an_implicit_only_destination_gets_an_instance_too_large_to_decode(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """Past transcode_max_decoded_bytes (lowered here) a transcode is refused; but Explicit
    to Implicit VR needs no decoding, so an Implicit-only PACS (storescp +xi) still gets a
    native instance, its pixel data byte for byte; a compressed one is a dead letter."""
    with StoreSCP(tmp_path / "implicit-pacs", "IMPL", extra_args=["+xi"]) as implicit:
        router = start_router({"transcode_max_decoded_bytes": 1000,
                               "destinations": {"impl": dicom_destination(implicit)},
                               "rules": [{"name": "all", "forward": ["impl"]}]})
        native = write_instance(tmp_path / "src", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                                size_bytes=200_000)
        compressed = write_compressed(tmp_path / "src", RLELossless)
        for source in (native, compressed):
            assert run_storescu([source], LOCALHOST, router.port, called_ae=AE).returncode == 0
        assert wait_for(lambda: len(implicit.received_files()) == 1), router.log()[-2000:]
        assert wait_for(lambda: router.metric("dicom_router_dead_letters_total",
                                              destination="impl", reason="transcode") == 1)
        got = dcmread(implicit.received_files()[0])
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert got.SOPInstanceUID == dcmread(native).SOPInstanceUID
        assert got.PixelData == dcmread(native).PixelData


@pytest.mark.parametrize(("source_ts", "target_ts", "accept"), [
    (RLELossless, ExplicitVRLittleEndian, "+xe"),  # encapsulated -> native
    (ExplicitVRLittleEndian, JPEGLSLossless, "+xt"),  # native -> lossless encapsulated
])
def test_a_multiframe_too_large_to_decode_whole_is_transcoded_frame_by_frame(
        start_router: RouterFactory, tmp_path: Path, source_ts: str, target_ts: str,
        accept: str) -> None:
    """200 frames of 64x64 16-bit (1.6 MB decoded) past a lowered
    transcode_max_decoded_bytes: a `transcode` dead letter, as a whole-slide image or a
    long cine past 2 GiB was. One frame (8 KB) fits the budget: it arrives, written one
    frame at a time, pixel for pixel, in the syntax the destination takes."""
    with StoreSCP(tmp_path / "pacs", "FRAMES", extra_args=[accept]) as scp:
        router = start_router({
            "transcode_max_decoded_bytes": 300_000,
            "destinations": {"pacs": {**dicom_destination(scp),
                                      "transfer_syntaxes": [UID(target_ts).keyword]}},
            "rules": [{"name": "all", "forward": ["pacs"]}]})
        folder = tmp_path / "src"
        folder.mkdir()
        source = write_native(folder, bits=16, frames=200) \
            if source_ts == ExplicitVRLittleEndian else \
            write_compressed(folder, source_ts, bits=16, frames=200)
        assert run_storescu([source], LOCALHOST, router.port, called_ae=AE).returncode == 0
        assert wait_for(lambda: len(scp.received_files()) == 1), router.log()[-2000:]
        got, original = dcmread(scp.received_files()[0]), dcmread(source)
        assert got.file_meta.TransferSyntaxUID == target_ts
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.NumberOfFrames == 200
        for index, (received, sent) in enumerate(zip(iter_pixels(got), iter_pixels(original),
                                                     strict=True)):
            assert (received == sent).all(), f"frame {index}"
        assert router.metric("dicom_router_dead_letters_total", destination="pacs",
                             reason="transcode") == 0
        assert router.metric("dicom_router_transcodes_total", destination="pacs",
                             how="by_frame") == 1
        assert "frame by frame (too large to decode whole) for pacs" in router.log()


def test_a_morph_value_the_character_set_cannot_encode_is_a_dead_letter_not_question_marks(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """Regression: a morph's value with characters the dataset's Specific Character Set
    cannot encode (Š in an ISO_IR 100 dataset) was written as '?' by pydicom and delivered
    with Success ("?ternberk Klinik"). It is now a morph dead letter naming the attribute,
    and a morph that sets SpecificCharacterSet first delivers the text, the dataset's own
    names re-encoded with it."""
    with StoreSCP(tmp_path / "latin", "LATIN") as latin, \
            StoreSCP(tmp_path / "utf8", "UTF8") as utf8:
        site = {"action": "set", "tag": "InstitutionName", "value": "Šternberk Klinik"}
        router = start_router({
            "destinations": {"latin": {**dicom_destination(latin), "morph": [site]},
                             "utf8": {**dicom_destination(utf8), "morph": [
                                 {"action": "set", "tag": "SpecificCharacterSet",
                                  "value": "ISO_IR 192"}, site]}},
            "rules": [{"name": "all", "forward": ["latin", "utf8"]}]})
        (source,) = instances(tmp_path / "in", 1, PatientName="Müller^Jürgen")
        assert dcmread(source).SpecificCharacterSet == "ISO_IR 100"
        sent = run_storescu([source], LOCALHOST, router.port, called_ae=AE)
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: len(utf8.received_files()) == 1), router.log()[-3000:]
        received = dcmread(utf8.received_files()[0])
        assert received.get_item("PatientName").value == "Müller^Jürgen ".encode()  # bytes
        assert received.SpecificCharacterSet == "ISO_IR 192"
        assert received.InstitutionName == "Šternberk Klinik"
        assert str(received.PatientName) == "Müller^Jürgen"
        assert wait_for(lambda: router.metric("dicom_router_dead_letters_total",
                                              destination="latin", reason="morph") == 1), \
            router.log()[-3000:]
        assert latin.received_files() == []
        (dead,) = (router.spool / "dead-letters").glob("*.json")
        assert ("InstitutionName: its new value has characters that the dataset's Specific "
                "Character Set (ISO_IR 100) cannot encode") in dead.read_text()
