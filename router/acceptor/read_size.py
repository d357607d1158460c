"""How much an association's next read asks for (pure; router/acceptor/connection.py).

256 KiB once associated: a large C-STORE arrives in few reads. While a dataset past 2 MiB
fills whole reads, 1 MiB: a read's fragments go to the spool file in one `writev`
(fragment_runs.py), and the kernel takes a 1 MiB write in larger pieces than several of
128 KiB (50 MB: 15-25% less router CPU, README "What changed"). Back to 256 KiB once no
dataset is arriving and a read came back small, so that an idle association does not keep
the extra 0.75 MiB (16 of them did at 16 senders of 50 MB).
"""

from __future__ import annotations

RECV_BYTES = 256 * 1024
LARGE_RECV_BYTES = 1024 * 1024
GROW_AFTER_BYTES = 2 * 1024 * 1024  # of one dataset: 0.5 MB instances keep the small reads


def next_read_size(current: int, count: int, receiving: bool, stored_so_far: int) -> int:
    """The size for the read after one of `current` bytes that returned `count`, with a
    dataset arriving or not and `stored_so_far` bytes of it in."""
    if receiving and count == current < LARGE_RECV_BYTES and \
            stored_so_far >= GROW_AFTER_BYTES:
        return LARGE_RECV_BYTES
    if current > RECV_BYTES and count < RECV_BYTES and not receiving:
        return RECV_BYTES
    return current
