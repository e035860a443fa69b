"""Signed listing cursors: a client gets back only the positions the api gave it.

A store cursor says where a listing stopped (which index, which score and
id). Clients carry it from one page to the next; signed, they cannot point a
listing anywhere it did not reach itself. The signature is an HMAC-SHA256 of
the cursor under a per-deployment secret, cut to 128 bits.
"""

import base64
import hashlib
import hmac
import logging
import secrets

from conveyor_api.settings import Settings

logger = logging.getLogger("conveyor.api.cursors")

# Bytes of the HMAC kept in a cursor: forging one takes 2^128 tries.
SIGNATURE_BYTES = 16
SEPARATOR = "."


class TamperedCursorError(ValueError):
    """A cursor this api did not issue (or issued under another secret)."""


def cursor_secret(settings: Settings) -> bytes:
    """The configured secret; in development, else a random one for this process;
    else one every replica derives alike from the api keys' digests (a secret
    they already share: changing the keys voids the cursors in flight)."""
    if settings.cursor_secret is not None:
        return settings.cursor_secret.get_secret_value().encode()
    if settings.development or not settings.keys:
        logger.info(
            "CONVEYOR_API_CURSOR_SECRET is unset: this process signs cursors with a key of its own"
        )
        return secrets.token_bytes(32)
    digests = "\n".join(sorted(k.sha256 for k in settings.keys))
    return hashlib.sha256(b"conveyor cursor\n" + digests.encode()).digest()


class CursorSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, cursor: str) -> str:
        digest = hmac.new(self._secret, cursor.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:SIGNATURE_BYTES]).decode().rstrip("=")

    def sign(self, cursor: str | None) -> str | None:
        return None if cursor is None else f"{cursor}{SEPARATOR}{self._mac(cursor)}"

    def verify(self, signed: str | None) -> str | None:
        """The cursor inside `signed`, or TamperedCursorError."""
        if signed is None:
            return None
        cursor, _, mac = signed.rpartition(SEPARATOR)
        if not cursor or not hmac.compare_digest(mac.encode(), self._mac(cursor).encode()):
            raise TamperedCursorError(signed)
        return cursor
