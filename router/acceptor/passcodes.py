"""Passcodes of user identity negotiation: stored as PBKDF2 hashes (`dicom-router
hash-passcode`), checked here.

A check costs about 60 ms of CPU by design (PBKDF2_ITERATIONS), and a peer asks for it
before it is anyone, so:
- an unknown username costs the same as a wrong passcode (a hash against a stored string
  that matches nothing), or the time of the refusal tells which usernames exist;
- one hash runs at a time in an acceptor: requests flooding it wait for each other (within
  the association's deadlines) and take one core at most, never all of them;
- a username and passcode that passed are remembered (a digest of the passcode, with the
  stored hash it matched, so a changed config forgets them): a modality that associates
  again pays a dictionary lookup, not the hash, and is not held up by a flood.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

PBKDF2_ITERATIONS = 200_000
REMEMBERED = 1024  # passed checks kept; past it the memory starts again

# Matches no passcode: its digest is not PBKDF2's output for any (the salt is fixed).
_NOBODY = f"pbkdf2_sha256${PBKDF2_ITERATIONS}${'00' * 16}${'00' * 32}"


def hash_passcode(passcode: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", passcode.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def passcode_matches(passcode: bytes, stored: str) -> bool:
    _, iterations, salt, expected = stored.split("$")
    digest = hashlib.pbkdf2_hmac("sha256", passcode, bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(digest.hex(), expected)


class PasscodeCheck:
    def __init__(self) -> None:
        self._passed: dict[tuple[str, bytes], str] = {}
        self._lock = threading.Lock()
        self._hashing = threading.Lock()

    def matches(self, username: str, passcode: bytes, stored: str | None) -> bool:
        """Whether `passcode` is the one `stored` was made from; `stored` None for a username
        nobody configured (refused, in the time a wrong passcode takes)."""
        key = (username, hashlib.sha256(passcode).digest())
        with self._lock:
            if stored is not None and self._passed.get(key) == stored:
                return True
        with self._hashing:
            matched = passcode_matches(passcode, stored or _NOBODY) and stored is not None
        if matched:
            with self._lock:
                if len(self._passed) >= REMEMBERED:
                    self._passed.clear()
                self._passed[key] = stored  # type: ignore[assignment]
        return matched
