"""The status page's picture in the README (docs/images/status-page.png), taken by
the browser tests so it stays current.

The PNG carries a fingerprint of the page's files (a tEXt chunk); a change to
the page without a new picture makes the picture stale, which
tests/test_readme.py reports and the browser test mends (then fails once, so
the new picture gets committed).
"""

import hashlib
import struct
import zlib

from tests.support.processes import REPO_ROOT

README_IMAGE = REPO_ROOT / "docs" / "images" / "status-page.png"
UI_STATIC = REPO_ROOT / "services" / "api" / "src" / "conveyor_api" / "ui" / "static"
FINGERPRINT_KEY = b"conveyor-ui"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ui_fingerprint() -> str:
    """A digest of every file the status page is made of."""
    digest = hashlib.sha256()
    for path in sorted(UI_STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(UI_STATIC).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        chunks.append((kind, png[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_fingerprint(png: bytes, fingerprint: str) -> bytes:
    """`png` with a tEXt chunk naming the page's fingerprint, right after its header."""
    chunks = _chunks(png)
    text = _chunk(b"tEXt", FINGERPRINT_KEY + b"\0" + fingerprint.encode())
    rest = b"".join(_chunk(kind, data) for kind, data in chunks[1:])
    return PNG_SIGNATURE + _chunk(*chunks[0]) + text + rest


def fingerprint_of(png: bytes) -> str | None:
    for kind, data in _chunks(png):
        if kind == b"tEXt" and data.startswith(FINGERPRINT_KEY + b"\0"):
            return data.split(b"\0", 1)[1].decode()
    return None


def readme_image_is_current() -> bool:
    return README_IMAGE.exists() and fingerprint_of(README_IMAGE.read_bytes()) == ui_fingerprint()


def refresh_readme_image(png: bytes) -> bool:
    """Write the picture if it is missing or stale; True when it was written."""
    if readme_image_is_current():
        return False
    README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    README_IMAGE.write_bytes(with_fingerprint(png, ui_fingerprint()))
    return True
