"""Microbenchmark of router/dicom/engine beside pynetdicom's decoders (no sockets).

    .venv/bin/python -m loadtest.engine_decode [--count 20000] [--size 10000]

Prints messages/s for: the engine receiving one C-STORE-RQ (command PDU + one data PDU)
and answering it, the engine encoding one, and pynetdicom decoding the same two PDUs into
a C_STORE_RQ message (P_DATA_TF.decode + DIMSEMessage.decode_msg, pydicom command set).
Numbers are per process on one core; the machine's other load shows in them.
"""

from __future__ import annotations

import argparse
import random
import time

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu import P_DATA_TF

from router.dicom.engine import (
    AssociateAC,
    AssociateRQ,
    Association,
    CStoreRQ,
    CStoreRSP,
    PresentationContextAC,
    PresentationContextRQ,
    SendCommand,
    SendData,
    UserInformation,
)

CT, EXPLICIT, UID = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "1.2.3.4.5.6.7.8"


def _pair() -> tuple[Association, Association]:
    info = UserInformation(max_length=262144, implementation_class_uid="1.2.3")
    scu, scp = Association.requestor(max_pdu_length=262144), Association.acceptor(
        max_pdu_length=262144)
    scp.receive_data(scu.send(AssociateRQ("B", "A", (PresentationContextRQ(1, CT, (EXPLICIT,)),),
                                          info)))
    scu.receive_data(scp.send(AssociateAC("B", "A", (PresentationContextAC(1, 0, EXPLICIT),),
                                          info)))
    return scu, scp


def _rate(label: str, count: int, run: object) -> None:
    start = time.perf_counter()
    for _ in range(count):
        run()  # type: ignore[operator]
    seconds = time.perf_counter() - start
    print(f"{label:58s} {count / seconds:10,.0f}/s {seconds / count * 1e6:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args()
    scu, scp = _pair()
    dataset = random.Random(1).randbytes(args.size)
    command = scu.send(SendCommand(1, CStoreRQ(1, CT, UID)))
    data = scu.send(SendData(1, dataset))
    response = CStoreRSP(1, CT, UID, 0)

    def engine_receive() -> None:
        scp.receive_data(command)
        scp.receive_data(data)
        scp.send(SendCommand(1, response))

    def engine_send() -> None:
        scu.send(SendCommand(1, CStoreRQ(1, CT, UID)))
        scu.send(SendData(1, dataset))

    def pynetdicom_receive() -> None:
        message = C_STORE_RQ()
        for raw in (command, data):
            pdu = P_DATA_TF()
            pdu.decode(raw)
            message.decode_msg(pdu.to_primitive())
        _ = message.command_set.AffectedSOPInstanceUID

    _rate(f"engine: receive a {args.size} B C-STORE-RQ and answer it", args.count,
          engine_receive)
    _rate(f"engine: encode a {args.size} B C-STORE-RQ", args.count, engine_send)
    _rate("pynetdicom: decode the same PDUs into a C_STORE_RQ", args.count, pynetdicom_receive)


if __name__ == "__main__":
    main()
