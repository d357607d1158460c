"""The worker's C-STORE sender alone: N instances over one association into a storescp.

    .venv/bin/python -m loadtest.sender [--size 0.5m] [--count 200] [--rounds 2]

Delivers with router/dicom/store_sender.DicomDestination (as a delivery thread does, minus
the broker and the spool) to a DCMTK storescp without --fork that discards what it gets
(--ignore), after one warm-up instance that opens the association. Prints, per round, the
wall seconds, the instances per second and this process's CPU seconds (every thread's:
pynetdicom's own threads counted when a sender uses them). Run the same command in another
checkout to compare two senders; interleave rounds, the machine's other load shows in them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from router.core.config import DicomDestination as DicomConfig
from router.dicom.net import configure_pynetdicom
from router.dicom.store_sender import DicomDestination
from tests.dcmtk import LOCALHOST, StoreSCP
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.unit.helpers import make_header

CT = "1.2.840.10008.5.1.4.1.1.2"
SIZES = {"10k": 10_240, "0.5m": 524_288, "50m": 52_428_800}


def _files(folder: Path, size: int, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("*.dcm"))[:count]
    while len(files) < count:
        files.append(write_instance(folder, sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                                    size_bytes=size))
    return files


def run(files: list[Path], work: Path) -> dict[str, float]:
    jobs = [make_header(sop_class_uid=CT, sop_instance_uid=f.stem,
                        transfer_syntax_uid=EXPLICIT_VR_LE) for f in files]
    with StoreSCP(work, "PACS", extra_args=["--ignore"]) as pacs:
        config = DicomConfig(type="dicom", ae_title="PACS", host=LOCALHOST, port=pacs.port,
                             max_pdu=256 * 1024)
        sender = DicomDestination("pacs", config, "ROUTER")
        sender.deliver(jobs[0], files[0])  # the association is open from here
        cpu, wall = time.process_time(), time.perf_counter()
        for job, path in zip(jobs, files, strict=True):
            sender.deliver(job, path)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sender.close()
    return {"wall_s": round(wall, 3), "per_s": round(len(files) / wall, 1),
            "cpu_s": round(cpu, 3), "cpu_ms_per_instance": round(1000 * cpu / len(files), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5m")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sender-data")
    args = parser.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")  # DCMTK reads it (docs: Nagle costs ~40 ms)
    configure_pynetdicom(chunked_send=True, chunked_receive=True)  # as a worker does
    files = _files(args.data / args.size, SIZES[args.size], args.count)
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps({"size": args.size, "count": args.count,
                              **run(files, Path(work) / "PACS")}))


if __name__ == "__main__":
    main()
