"""A job's priority: the router's four levels, and how they map to DIMSE Priority.

Used by the acceptor (from the C-STORE's Priority and the rules), the broker (queue order)
and the senders (the Priority they put on the outgoing C-STORE).
"""

URGENT, HIGH, NORMAL, LOW = 0, 1, 2, 3
PRIORITIES = {"urgent": URGENT, "high": HIGH, "normal": NORMAL, "low": LOW}
# DIMSE Priority (PS3.7 9.3.1.1): 0 medium, 1 high, 2 low.
FROM_DIMSE = {0: NORMAL, 1: HIGH, 2: LOW}
TO_DIMSE = {URGENT: 1, HIGH: 1, NORMAL: 0, LOW: 2}
