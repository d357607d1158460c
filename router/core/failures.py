"""Delivery failure reasons that the workers report and the broker acts on.

A worker classifies each failed delivery with a short reason (README "Delivery and
retries"); these sets say which reasons are about the destination rather than the instance.
"""

# Transient reasons that say the destination, not the instance, is in trouble: its whole
# queue pauses with backoff, and no attempt is spent.
# `max_pdu`: it advertised a maximum PDU length too small to carry any data.
# `unavailable`, `auth`, `redirect`, `answer_too_large`: a DICOMweb service answered for
# itself, not for the instance (502/503/504/429; 401/403: its credentials; a 3xx: its URL;
# an answer past max_answer_bytes: not a STOW-RS answer at all).
DESTINATION_FAILURES = frozenset({"connection", "aborted", "rejected", "tls", "max_pdu",
                                  "protocol", "unavailable", "auth", "redirect",
                                  "answer_too_large"})
# Of those, the ones that can come while an instance is on the wire (Result.during_store):
# the instance may be the cause, so it goes behind the destination's other jobs and spends
# an attempt only once the destination took something else (router/broker/dispatch.py).
STORE_FAILURES = frozenset({"aborted", "protocol"})
# A batch or run stops at these: the destination is down, or busy (it refused one more
# association while the router holds another: router/broker/concurrency.py).
HOLD_BACK_FAILURES = DESTINATION_FAILURES | {"busy"}
# The router's own spool could not take a worker's copy of the instance (a morph,
# de-identification or transcode: disk full, read-only, I/O error). Neither the instance nor
# the destination is at fault: the delivery waits and tries again, no attempt is spent.
SPOOL_FAILURES = frozenset({"spool_write"})
