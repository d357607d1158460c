"""The de-identification key that cells share (spool.deidentify_key_file): read and checked.

Whoever holds the key can recompute every replacement UID and pseudonym, so a shared key
file must be readable by the router alone; and every cell must hold the same 32 bytes, or
one study arriving through two cells becomes two studies of two pseudonymous patients.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from router.core.errors import RouterError

SECRET_BYTES = 32
KEY_HOWTO = f"make one with: head -c {SECRET_BYTES} /dev/urandom > FILE; chmod 600 FILE"


def read_key_file(path: Path) -> bytes:
    """The key's 32 bytes; RouterError saying what is wrong with the file otherwise."""
    try:
        info = path.stat()
        key = path.read_bytes()
    except FileNotFoundError:
        raise RouterError(f"{path}: no such file ({KEY_HOWTO})") from None
    except OSError as exc:
        raise RouterError(f"{path}: cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RouterError(f"{path}: not a regular file")
    if info.st_mode & stat.S_IRWXO:
        raise RouterError(f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets every user "
                          f"read it: chmod o-rwx (whoever has the key can re-identify)")
    # A Kubernetes Secret mounted with the pod's fsGroup is group-readable by that group,
    # which is the router's own: allowed; any other group is someone else.
    if info.st_mode & stat.S_IRWXG and info.st_gid != os.getegid():
        raise RouterError(f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets group "
                          f"{info.st_gid} read it: chmod g-rwx (whoever has the key can "
                          f"re-identify)")
    if len(key) != SECRET_BYTES:
        raise RouterError(f"{path}: {len(key)} bytes, not a {SECRET_BYTES}-byte key "
                          f"(raw bytes, not hex or base64; {KEY_HOWTO})")
    return key
