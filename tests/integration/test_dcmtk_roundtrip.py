"""storescu -> storescp with no router in between: proves the sample generator and
the DCMTK helpers, i.e. that every generated syntax survives DCMTK byte-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import EnhancedCTImageStorage

from tests.dcmtk import LOCALHOST, StoreSCP, run_echoscu, run_storescu
from tests.dicom_samples import (
    ALL_SYNTAXES,
    EXPLICIT_VR_LE,
    dataset_digest,
    generate_mixed_set,
    write_instance,
)

pytestmark = pytest.mark.integration


def _syntax(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


def test_mixed_set_and_large_multiframe_round_trip_byte_identical(tmp_path: Path) -> None:
    sources = generate_mixed_set(tmp_path / "src", 40)
    big = write_instance(
        tmp_path / "src-big",
        sop_class=EnhancedCTImageStorage,
        transfer_syntax=EXPLICIT_VR_LE,
        size_bytes=30_000_000,
        frames=50,
    )
    sources.append(big)
    assert {_syntax(p) for p in sources} == set(ALL_SYNTAXES)
    assert 29_000_000 < big.stat().st_size < 31_000_000

    with StoreSCP(tmp_path / "received", "ROUNDTRIP") as scp:
        echo = run_echoscu(LOCALHOST, scp.port, called_ae=scp.ae_title)
        assert echo.returncode == 0, echo.stderr
        sent = run_storescu(sources, LOCALHOST, scp.port, called_ae=scp.ae_title)
        assert sent.returncode == 0, sent.stdout + sent.stderr + scp.log()
        received = scp.received_files()

    assert len(received) == len(sources)
    stored = {dataset_digest(p): p for p in received}
    for source in sources:
        match = stored.get(dataset_digest(source))
        assert match is not None, f"{source.name} ({_syntax(source)}) changed in transit"
        # No conversion: the peer stored it in the syntax it was sent in.
        assert _syntax(match) == _syntax(source)
