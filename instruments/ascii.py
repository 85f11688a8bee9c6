"""Pieces of plain-ASCII line protocols that several drivers share (SCPI, the spectrometer's protocol)."""

from __future__ import annotations

import re

from instruments.errors import ProtocolError

_PRINTABLE = re.compile(rb"[\x20-\x7e]+")


def printable_text(body: bytes, frame: bytes) -> str:
    """``body`` (a frame without its terminator) as text.

    Raises:
        ProtocolError: empty, or holding bytes outside printable ASCII (a garbled line).
    """
    if not _PRINTABLE.fullmatch(body):
        raise ProtocolError(f"reply {frame[:80]!r} is empty or holds non-printable bytes")
    return body.decode("ascii")


def check_idn(text: str, frame: bytes) -> str:
    """An IEEE 488.2 ``*IDN?`` reply: four non-empty comma-separated fields (maker, model, serial, firmware).

    Raises:
        ProtocolError: any other shape.
    """
    fields = text.split(",")
    if len(fields) != 4 or not all(f.strip() for f in fields):
        raise ProtocolError(f"*IDN? reply {frame!r} is not maker,model,serial,firmware")
    return text
