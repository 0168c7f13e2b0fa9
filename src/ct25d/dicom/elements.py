"""The raw top-level data elements of a DICOM file up to PixelData, as bytes.

Two readers fill the same `RawHeader`: `parse_file` walks the file's bytes itself, and
`from_dataset` takes them from a pydicom dataset. `parse_file` is written by hand because the scan
reads every file of an archive only to group and sort it, and pydicom's `dcmread` builds a full
Dataset for that (0.26 ms a file, 5x this parser); dcm2niix-class ingest speed needs the
difference. It follows only what CT archives use: a preamble, then implicit or explicit VR little
endian (which covers every encapsulated syntax). Anything else (big endian, deflate, no preamble,
a truncated or inconsistent header) returns None, and the caller reads the file with pydicom,
which also words the error for a file that cannot be read at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NoReturn

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
NOT_LITTLE_ENDIAN = {ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2) and the others.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
             b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}  # fmt: skip
HEADER_SIZE = {**{vr: 8 for vr in SHORT_VRS}, **{vr: 12 for vr in LONG_VRS}}
HEAD_BYTES = 16384  # one read covers a typical CT header; longer ones are read whole
_TAG_LENGTH = struct.Struct("<HHI")  # implicit VR element header; also every item header
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class RawHeader:
    """Raw value bytes of the wanted top-level elements, and where the pixel data lies."""

    elements: dict[int, bytes]
    little_endian: bool
    transfer_syntax: str
    pixel_data: tuple[int, int] | None  # (file offset, length) of PixelData; length UNDEFINED if encapsulated


class _NeedMore(Exception):
    """The header goes on past the bytes read so far."""


class _Unfollowed(Exception):
    """Something this parser does not follow: leave the file to pydicom."""


def parse_file(path: str, wanted: frozenset[int]) -> RawHeader | None:
    """The file's header from its bytes, or None when pydicom must read it."""
    try:
        with open(path, "rb") as file:
            data = file.read(HEAD_BYTES)
            if len(data) == HEAD_BYTES:
                try:
                    return _parse(data, wanted, at_eof=False)
                except _NeedMore:
                    data += file.read()
            return _parse(data, wanted, at_eof=True)
    except (OSError, _NeedMore, _Unfollowed, UnicodeDecodeError):
        return None


def from_dataset(ds: pydicom.Dataset, wanted: frozenset[int]) -> RawHeader:
    """The same header from a dataset pydicom read with PixelData deferred (`defer_size`)."""
    elements = {}
    for tag in wanted:
        item = ds.get_item(tag)
        if item is None or not item.value:
            continue
        if isinstance(item, RawDataElement):
            elements[tag] = item.value
        else:  # converted while reading (pydicom needs SpecificCharacterSet): text, back to its bytes
            value = item.value
            parts = list(value) if isinstance(value, MultiValue | list) else [value]
            elements[tag] = "\\".join(str(v) for v in parts).encode("ascii")
    pixels = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    offset = getattr(pixels, "value_tell", None)
    return RawHeader(
        elements=elements,
        little_endian=bool(ds.original_encoding[1]),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        pixel_data=None if pixels is None else (-1 if offset is None else int(offset), pixels.length),
    )


def _parse(data: bytes, wanted: frozenset[int], at_eof: bool) -> RawHeader:
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Unfollowed
    reader = _Reader(data, at_eof)
    elements: dict[int, bytes] = {}
    syntax, pos, in_meta, implicit, end = "", 132, True, False, len(data)
    while pos < end:
        if in_meta and data[pos : pos + 2] != b"\x02\x00":
            # The file meta group (always explicit VR LE) has ended: the dataset's encoding begins.
            if not syntax or syntax in NOT_LITTLE_ENDIAN:
                raise _Unfollowed
            in_meta, implicit = False, syntax == ImplicitVRLittleEndian
        tag, vr, length, pos = reader.element(pos, implicit)
        if tag == PIXEL_DATA:
            return RawHeader(elements, True, syntax, (pos, length))
        if length == UNDEFINED:
            pos = reader.skip_sequence(pos, nested_implicit(implicit, vr))
            continue
        if tag == TRANSFER_SYNTAX:
            syntax = reader.take(pos, length).rstrip(b"\0 ").decode("ascii")
        elif tag in wanted:
            elements[tag] = reader.take(pos, length)
        pos += length
    if pos > end:
        reader.short()  # the last element runs past the bytes read
    if not at_eof:
        raise _NeedMore
    if in_meta:
        raise _Unfollowed
    return RawHeader(elements, True, syntax, None)


def nested_implicit(implicit: bool, vr: bytes) -> bool:
    """Encoding inside an undefined-length element: an explicit-VR `UN` one (a vendor's private
    sequence whose VR the writer did not know) holds implicit VR little endian (PS3.5 6.2.2)."""
    return implicit or vr == b"UN"


class _Reader:
    """Bounds-checked element and item headers over the bytes read so far."""

    def __init__(self, data: bytes, at_eof: bool) -> None:
        self.data, self.at_eof = data, at_eof

    def short(self) -> NoReturn:
        raise _Unfollowed if self.at_eof else _NeedMore  # at EOF: a truncated header

    def need(self, end: int) -> None:
        if end > len(self.data):
            self.short()

    def take(self, pos: int, length: int) -> bytes:
        self.need(pos + length)
        return self.data[pos : pos + length]

    def element(self, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
        """(tag, VR (b"" if implicit), length, value position) of the element starting at `pos`."""
        try:
            if implicit:
                group, elem, length = _TAG_LENGTH.unpack_from(self.data, pos)
                return group << 16 | elem, b"", length, pos + 8
            group, elem, vr, length = _TAG_VR_SHORT.unpack_from(self.data, pos)
            size = HEADER_SIZE.get(vr)
            if size is None:
                raise _Unfollowed  # not explicit VR after all
            if size == 12:
                length = _LONG_LENGTH.unpack_from(self.data, pos + 8)[0]
            return group << 16 | elem, vr, length, pos + size
        except struct.error:  # fewer bytes left than an element header
            self.short()

    def skip_sequence(self, pos: int, implicit: bool) -> int:
        """Position after an undefined-length sequence whose first item starts at `pos`."""
        while True:
            self.need(pos + 8)
            group, elem, length = _TAG_LENGTH.unpack_from(self.data, pos)
            tag, pos = group << 16 | elem, pos + 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise _Unfollowed
            if length != UNDEFINED:
                pos += length
                continue
            while True:  # an undefined-length item: its elements until the item delimiter
                self.need(pos + 8)
                group, elem, _ = _TAG_LENGTH.unpack_from(self.data, pos)
                if group << 16 | elem == ITEM_END:
                    pos += 8
                    break
                _, vr, length, pos = self.element(pos, implicit)
                if length == UNDEFINED:
                    pos = self.skip_sequence(pos, nested_implicit(implicit, vr))
                else:
                    pos += length
