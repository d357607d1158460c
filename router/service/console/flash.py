"""Messages shown after an action ("pacs paused"), kept on the server and named in the
redirect by a random token: a link someone crafts cannot make the console show text of its
maker's choosing (it once carried the text itself, as `?msg=`)."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

# The newest messages of all users: one per action, read once by the page it redirects to.
KEEP = 256


class Flashes:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._messages: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, user: str, message: str) -> str:
        """Keep `message` for `user`; the token that names it in the redirect."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._messages[token] = (user, message)
            while len(self._messages) > self.keep:
                self._messages.popitem(last=False)
        return token

    def take(self, user: str, token: str) -> str:
        """The message `token` names, if it is `user`'s ("" otherwise, or once it was shown
        or pushed out by newer ones)."""
        with self._lock:
            owner, message = self._messages.get(token, ("", ""))
            if owner != user or not owner:
                return ""
            del self._messages[token]
        return message
