"""Delivery failure reasons that the workers report and the broker acts on.

A worker classifies each failed delivery with a short reason (README "Delivery and
retries"); these sets say which reasons are about the destination rather than the instance.
"""

# Transient reasons that say the destination, not the instance, is in trouble: its whole
# queue pauses with backoff, and no attempt is spent.
DESTINATION_FAILURES = frozenset({"connection", "aborted", "rejected", "tls"})
# A batch or run stops at these: the destination is down, or busy (it refused one more
# association while the router holds another: router/broker/concurrency.py).
HOLD_BACK_FAILURES = DESTINATION_FAILURES | {"busy"}
