"""Signed listing cursors: which secret signs them, and what a signature refuses."""

import pytest

from conveyor_api.cursors import CursorSigner, TamperedCursorError, cursor_secret
from conveyor_api.settings import Settings
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key

KEYS = [api_key(TEST_KEY_NAME, TEST_KEY)]


def test_replicas_with_the_same_keys_sign_alike_and_development_does_not() -> None:
    one, other = Settings(keys=KEYS), Settings(keys=KEYS)
    assert cursor_secret(one) == cursor_secret(other)  # a cursor from one replica reads on another
    rotated = Settings(keys=[api_key(TEST_KEY_NAME, TEST_KEY + "x")])
    assert cursor_secret(rotated) != cursor_secret(one)
    given = Settings(keys=KEYS, cursor_secret="s3cret")
    assert cursor_secret(given) == b"s3cret"
    dev = Settings(keys=KEYS, development=True)
    assert cursor_secret(dev) != cursor_secret(dev)  # a secret of each process


def test_a_signed_cursor_reads_back_and_an_altered_one_does_not() -> None:
    signer = CursorSigner(b"k")
    signed = signer.sign("abc")
    assert signed is not None
    assert signer.verify(signed) == "abc"
    assert signer.sign(None) is None
    assert signer.verify(None) is None
    position, _, mac = signed.rpartition(".")
    for forged in ("abc", f"abd.{mac}", f"{position}.", ".", "", CursorSigner(b"j").sign("abc")):
        with pytest.raises(TamperedCursorError):
            signer.verify(forged)
