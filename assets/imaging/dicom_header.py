"""A small DICOM Part-10 header reader for the scan: only the top-level tags the lake uses.

Why: pydicom builds an element object for every element of the header and converts the values
we ask for; on a warm cache that costs about as much as reading an uncompressed slice whole, so
a scan built on ``dcmread(stop_before_pixels=True)`` cannot be much faster than a full read
(bench/README.md, section 1). This reader walks the element stream with ``struct``, skips every
value it does not need (sequences included, without decoding them), stops after the last wanted
tag (0028,0030), and decodes only the wanted values, from the first few kilobytes of the file.

What it reads: files with the 128-byte preamble + ``DICM``, file meta in explicit VR little
endian, a data set in implicit or explicit VR little endian (every compressed transfer syntax
keeps explicit VR little endian for the header), character sets ASCII, ISO_IR 100 (latin-1) and
ISO_IR 192 (UTF-8). Anything else (no preamble, big endian, deflated, other character sets, a VR
it does not know, a length that runs past the end, an explicit-VR element whose VR bytes are not
a VR) raises ``Decline``: the caller falls back to pydicom (``io.read_header``), which also gives
the quarantine rule and reason for broken files. So this module only needs to be right where it
answers; ``tests/test_dicom_header.py`` checks it against pydicom on every DICOM file in
../shared/data.

The values come back as a ``HeaderValues`` mapping with pydicom's keywords, in the shapes the
scan's converters take (``header_worker.text/number/numbers``): text as ``str`` (one value) or
``tuple[str, ...]`` (several, split at backslashes, each stripped), US as ``int``. Decoded values
are memoized by their bytes (the files of a series repeat most of them).
No third-party import: process-pool workers start in milliseconds.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False  # typing and pathlib stay unimported in a worker
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

# The tags the lake reads from image headers (pydicom: ``specific_tags`` keeps reads cheap).
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PatientID",
    "PatientName",
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "SeriesDescription",
    "ProtocolName",
    "BodyPartExamined",
    "MagneticFieldStrength",
    "SequenceName",
    "ScanningSequence",
    "EchoTime",
    "RepetitionTime",
    "SliceThickness",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
    "AcquisitionDate",
    "SeriesDate",
    "StudyDate",
    "ContentDate",
]

# keyword -> (tag, VR), top level only. tests/test_dicom_header.py checks them against pydicom's
# data dictionary.
WANTED: dict[str, tuple[int, str]] = {
    "DirectoryRecordSequence": (0x00041220, "SQ"),  # presence only (a DICOMDIR)
    "SpecificCharacterSet": (0x00080005, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "AcquisitionDate": (0x00080022, "DA"),
    "ContentDate": (0x00080023, "DA"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "ManufacturerModelName": (0x00081090, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "ContrastBolusAgent": (0x00180010, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "ScanningSequence": (0x00180020, "CS"),
    "SequenceName": (0x00180024, "SH"),
    "SliceThickness": (0x00180050, "DS"),
    "KVP": (0x00180060, "DS"),
    "RepetitionTime": (0x00180080, "DS"),
    "EchoTime": (0x00180081, "DS"),
    "MagneticFieldStrength": (0x00180087, "DS"),
    "ProtocolName": (0x00181030, "LO"),
    "ContrastBolusRoute": (0x00181040, "LO"),
    "ConvolutionKernel": (0x00181210, "SH"),
    "StudyID": (0x00200010, "SH"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "FrameOfReferenceUID": (0x00200052, "UI"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "PixelSpacing": (0x00280030, "DS"),
}
# keyed by the little-endian uint32 of the tag's 4 bytes: group | element << 16
_BY_RAW = {(tag >> 16) | (tag & 0xFFFF) << 16: (kw, vr) for kw, (tag, vr) in WANTED.items()}
_CHARSET_RAW = 0x0008 | 0x0005 << 16
_LAST_GROUP, _LAST_ELEMENT = max(WANTED.values())[0] >> 16, max(WANTED.values())[0] & 0xFFFF

# VRs whose explicit-VR length is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()
)  # fmt: skip
_VRS = _LONG_VRS | frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
)
_VR_LONG = {vr: vr in _LONG_VRS for vr in _VRS}  # VR -> 4-byte length?
_NOT_SPLIT = frozenset(("LT", "ST", "UT", "UR"))  # single-valued text: no backslash split
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

IMPLICIT_LE = "1.2.840.10008.1.2"
_DECLINED_SYNTAXES = {
    "1.2.840.10008.1.2.2": "explicit VR big endian",
    "1.2.840.10008.1.2.1.99": "deflated",
}
_ENCODINGS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_CHUNK = 16384
_MAX_VALUE = 1 << 16  # longest wanted value read (UIDs, names, dates, numbers: a few dozen bytes)
_TABLES: dict[bytes, dict] = {}  # SpecificCharacterSet -> raw tag -> (keyword, memo)
_MEMO_SIZE = 4096  # values kept per tag and character set
_O_RDONLY = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_TAG_VR_U16 = struct.Struct("<HH2sH").unpack_from  # explicit VR: group, element, VR, length
_RAW_U32 = struct.Struct("<II").unpack_from  # implicit VR: tag (as uint32), length
_RAW_VR_U16 = struct.Struct("<I2sH").unpack_from  # explicit VR: tag (as uint32), VR, length


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# SOP classes that hold no image slices (structured reports, RT plans, presentation states, ...).
_NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.")
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.5": "RT plan",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT dose",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.66.1": "spatial registration",
}


class ImagingError(Exception):
    """A file that cannot be used; ``rule`` is the quarantine rule id, ``detail`` the finding."""

    def __init__(self, rule: str, detail: str):
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


class Decline(Exception):
    """This reader does not handle the file (or it is broken): use pydicom."""


class HeaderValues(dict):
    """Keyword -> value, with ``file_meta`` like a pydicom Dataset (``sop_kind`` reads both)."""

    file_meta: dict

    def __init__(self, *args, file_meta: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.file_meta = file_meta or {}


class _Stream:
    """Reads a file (an OS file descriptor) in chunks; ``pos`` is a file offset."""

    __slots__ = ("fd", "buf", "start", "pos")

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = os.pread(fd, _CHUNK, 0)
        self.start = 0
        self.pos = 0

    def view(self, n: int) -> tuple[bytes, int]:
        """(buffer, index) with at least ``n`` bytes available at ``pos``."""
        index = self.pos - self.start
        if index + n > len(self.buf):
            self.buf = os.pread(self.fd, max(n, _CHUNK), self.pos)
            self.start = self.pos
            index = 0
            if len(self.buf) < n:
                raise Decline("the header ends early")
        return self.buf, index

    def at_end(self) -> bool:
        """Whether the file ends at ``pos``."""
        return not os.pread(self.fd, 1, self.pos)


def read_header_values(path: Path | str, fd: int | None = None) -> HeaderValues:
    """The wanted top-level values of one DICOM Part-10 file, or ``Decline``. ``fd``: the file
    already open (``open_ahead``; read from its start, left open)."""
    try:
        return _read(path, fd)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:  # broken or cut values
        raise Decline(f"{type(exc).__name__} while parsing") from exc


def open_ahead(paths: Sequence[str]) -> list[int | None]:
    """Open files about to be read and ask the kernel to start reading their first
    ``_CHUNK`` bytes now (``POSIX_FADV_WILLNEED``, asynchronous): the reads of a whole chunk
    of files overlap instead of waiting one after the other (a cold page cache, a network
    share). None for a file that cannot be opened (its reader reports why). Close them with
    ``close_all``."""
    fds: list[int | None] = []
    advise = getattr(os, "posix_fadvise", None)
    for path in paths:
        try:
            fd = os.open(path, _O_RDONLY)
        except OSError:
            fds.append(None)
            continue
        if advise is not None:
            try:  # noqa: SIM105  (contextlib stays unimported in a worker)
                advise(fd, 0, _CHUNK, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
        fds.append(fd)
    return fds


def close_all(fds: Sequence[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            try:  # noqa: SIM105
                os.close(fd)
            except OSError:
                pass


def _read(path: Path | str, fd: int | None) -> HeaderValues:
    own = fd is None
    if own:
        fd = os.open(path, _O_RDONLY)
    try:
        stream = _Stream(fd)
        if stream.buf[128:132] != b"DICM":
            raise Decline("no DICOM preamble")
        stream.pos = 132
        meta = _read_meta(stream)
        syntax = meta.get("TransferSyntaxUID", "")
        if syntax in _DECLINED_SYNTAXES or not syntax:
            raise Decline(f"transfer syntax {syntax or 'missing'}")
        values = HeaderValues(file_meta=meta)
        _read_dataset(stream, syntax == IMPLICIT_LE, values)
    finally:
        if own:
            os.close(fd)
    return values


def _tables(charset: bytes) -> dict[int, tuple[str, _Memo | None]]:
    """raw tag -> (keyword, decoded values by bytes) for one SpecificCharacterSet value (or
    Decline); SpecificCharacterSet itself has no memo."""
    table = _TABLES.get(charset)
    if table is None:
        text = charset.decode("latin-1").strip(" \x00")
        encoding = _ENCODINGS.get(text)
        if encoding is None:
            raise Decline(f"character set {text}")
        if len(_TABLES) > 64:
            _TABLES.clear()
        table = _TABLES[charset] = {
            raw: (keyword, None if raw == _CHARSET_RAW else _Memo(vr, encoding))
            for raw, (keyword, vr) in _BY_RAW.items()
        }
    return table


class _Memo(dict):
    """bytes -> decoded value for one tag and encoding; decodes on a miss."""

    __slots__ = ("vr", "encoding")

    def __init__(self, vr: str, encoding: str):
        super().__init__()
        self.vr, self.encoding = vr, encoding

    def __missing__(self, data: bytes):
        if len(self) >= _MEMO_SIZE:
            self.clear()
        value = self[data] = _decode(data, self.vr, self.encoding)
        return value


def _read_meta(stream: _Stream) -> dict:
    """File meta group 0002 (always explicit VR little endian)."""
    meta = {}
    buf, start, pos = stream.buf, stream.start, stream.pos
    while True:
        if pos + 12 > start + len(buf):  # a meta group past the first chunk (rare): refill
            stream.pos = pos
            buf, _ = stream.view(8)
            start = stream.start
        i = pos - start
        group, element, vr, length = _TAG_VR_U16(buf, i)
        if group != 0x0002:
            stream.pos = pos
            return meta
        long = _VR_LONG.get(vr)
        if long:
            length = _U32(buf, i + 8)[0]
            pos += 12
        elif long is None:
            raise Decline("file meta is not explicit VR")
        else:
            pos += 8
        if length == _UNDEFINED:
            raise Decline("undefined length in file meta")
        if element in (0x0002, 0x0010):  # MediaStorageSOPClassUID, TransferSyntaxUID
            if pos + length > start + len(buf):
                stream.pos = pos
                buf, _ = stream.view(length)
                start = stream.start
            text = buf[pos - start : pos - start + length].decode("latin-1").strip(" \x00")
            meta["MediaStorageSOPClassUID" if element == 0x0002 else "TransferSyntaxUID"] = text
        pos += length


def _read_dataset(stream: _Stream, implicit: bool, found: dict[str, object]) -> None:
    """The wanted top-level elements into ``found``, decoded, up to the last wanted tag.

    The hot loop of the scan (every element of every header passes here once): tags are
    compared as the little-endian uint32 of (group, element), i.e. ``group | element << 16``;
    ``i`` is the index in the current buffer (file offset ``stream.start + i``). Values are
    decoded through a memo per tag and character set (``_tables``: the files of a series
    repeat most of them); SpecificCharacterSet (0008,0005) must precede the values it governs.

    The files of a series have the same elements, mostly of the same lengths: each element's
    header bytes (tag, VR, length) are kept as a template for the next file (``_TEMPLATE``).
    Where the next file has the same header bytes at the same place in its element sequence,
    the element is taken as it was parsed then (everything parsing decides depends on those
    bytes alone) and only its value is read; any other element goes through the full parse.
    """
    global _TEMPLATE
    table = _tables(b"")
    last_group, last_element, vr_long, max_value = _LAST_GROUP, _LAST_ELEMENT, _VR_LONG, _MAX_VALUE
    raw_u32, raw_vr_u16, u32, undefined = _RAW_U32, _RAW_VR_U16, _U32, _UNDEFINED
    buf, i = stream.buf, stream.pos - stream.start
    n = len(buf)
    template = _TEMPLATE[1] if _TEMPLATE[0] == implicit else ()
    t, t_end = 0, len(template)
    elements: list[tuple] = []  # this file's template: (header bytes, header size, size, raw)
    while True:
        if t < t_end:  # the same element as in the previous file?
            element = template[t]
            t += 1
            head, head_size, size, raw = element
            stop = i + size
            if stop <= n and buf[i : i + head_size] == head:
                elements.append(element)
                if raw is not None:  # a wanted element
                    keyword, memo = table[raw]
                    if memo is None:  # SpecificCharacterSet
                        if any(k != "DirectoryRecordSequence" for k in found):
                            raise Decline("SpecificCharacterSet after the values it governs")
                        table = _tables(buf[i + head_size : stop])
                    else:
                        found[keyword] = memo[buf[i + head_size : stop]]
                i = stop
                continue
        if i + 12 > n:  # refill (the last element of a file may be only 8 bytes long)
            stream.pos = stream.start + i
            if i == n and stream.at_end():
                _TEMPLATE = (implicit, elements)
                return  # the file ends cleanly after an element (a header-only file)
            try:
                buf, i = stream.view(12)
            except Decline:
                buf, i = stream.view(8)
            n = len(buf)
        first = i
        if implicit:
            raw, length = raw_u32(buf, i)
            vr = None
            i += 8
        else:
            raw, vr, length = raw_vr_u16(buf, i)
            long = vr_long.get(vr)
            if long:
                length = u32(buf, i + 8)[0]
                i += 12
            elif long is None:
                raise Decline(f"not a VR at offset {stream.start + i}")
            else:
                i += 8
        if raw & 0xFFFF >= last_group:
            if raw & 0xFFFF == 0xFFFE:
                raise Decline("item tag at the top level")
            if raw & 0xFFFF > last_group or (raw >> 16) > last_element:
                _TEMPLATE = (implicit, elements)
                return
        if length == undefined:
            if vr is not None and vr != b"SQ":
                raise Decline(f"undefined length for VR {vr.decode('latin-1')}")
            stream.pos = stream.start + i
            _skip_sequence(stream, implicit)
            buf, i = stream.buf, stream.pos - stream.start
            n = len(buf)
            if raw in table:
                found[table[raw][0]] = True  # presence
            elements.append(_NEVER)
            continue
        head_size = i - first
        elements.append(
            (buf[first:i], head_size, head_size + length, raw if raw in table else None)
        )
        wanted = table.get(raw)
        if wanted is not None:
            if length > max_value:  # no header value we read is this long: a damaged length
                raise Decline(f"a {length}-byte {wanted[0]}")
            if i + length > n:
                stream.pos = stream.start + i
                buf, i = stream.view(length)
                n = len(buf)
            keyword, memo = wanted
            if memo is None:  # SpecificCharacterSet: the decoding of the values after it
                if any(k != "DirectoryRecordSequence" for k in found):
                    raise Decline("SpecificCharacterSet after the values it governs")
                table = _tables(buf[i : i + length])
            else:
                found[keyword] = memo[buf[i : i + length]]
        i += length


_NEVER = (None, 0, 0, None)  # a template element no file matches (an undefined-length sequence)
_TEMPLATE: tuple[bool | None, list[tuple]] = (None, [])  # the last file's elements (see above)


def _skip_sequence(stream: _Stream, implicit: bool) -> None:
    """Skip the items of an undefined-length sequence, up to and past its delimiter."""
    while True:
        buf, i = stream.view(8)
        tag = _U16(buf, i)[0] << 16 | _U16(buf, i + 2)[0]
        length = _U32(buf, i + 4)[0]
        stream.pos += 8
        if tag == _SEQ_END:
            return
        if tag != _ITEM:
            raise Decline(f"expected an item at offset {stream.pos - 8}")
        if length == _UNDEFINED:
            _skip_item(stream, implicit)
        else:
            stream.pos += length


def _skip_item(stream: _Stream, implicit: bool) -> None:
    """Skip the elements of an undefined-length item, up to and past its delimiter."""
    while True:
        buf, i = stream.view(8)
        group, element = _U16(buf, i)[0], _U16(buf, i + 2)[0]
        if group == 0xFFFE:
            if element != 0xE00D:
                raise Decline(f"unexpected delimiter at offset {stream.pos}")
            stream.pos += 8
            return
        if implicit:
            length = _U32(buf, i + 4)[0]
            vr = None
            stream.pos += 8
        else:
            vr = buf[i + 4 : i + 6]
            if vr in _LONG_VRS:
                buf, i = stream.view(12)
                length = _U32(buf, i + 8)[0]
                stream.pos += 12
            elif vr in _VRS:
                length = _U16(buf, i + 6)[0]
                stream.pos += 8
            else:
                raise Decline(f"not a VR at offset {stream.pos}")
        if length == _UNDEFINED:
            if vr is not None and vr != b"SQ":
                raise Decline("undefined length inside an item")
            _skip_sequence(stream, implicit)
        else:
            stream.pos += length


def _decode(data: bytes, vr: str, encoding: str):
    if vr == "SQ":
        return True  # presence
    if vr == "US":
        return _U16(data, 0)[0] if len(data) >= 2 else None
    text = data.decode(encoding if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") else "latin-1")
    if vr in _NOT_SPLIT:
        text = text.rstrip(" \x00")
        return text or None
    if vr == "PN":  # like str(pydicom's PersonName): empty trailing component groups dropped
        text = text.strip(" \x00").rstrip("=")
    parts = tuple(part.strip(" \x00") for part in text.split("\\"))
    if len(parts) == 1:
        return parts[0] or None
    return parts  # a tuple: values are shared between files through the memo


def sop_kind(dataset) -> str:
    """'image', 'seg', 'rtstruct', 'dicomdir' or 'other:<what>' for a DICOM header."""
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    media_class = str(getattr(dataset, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    if sop_class == SEG_SOP_CLASS:
        return "seg"
    if sop_class == RTSTRUCT_SOP_CLASS:
        return "rtstruct"
    if media_class == DICOMDIR_SOP_CLASS or (
        not sop_class and "DirectoryRecordSequence" in dataset
    ):
        return "dicomdir"
    if sop_class in _NON_IMAGE_CLASSES:
        return f"other:{_NON_IMAGE_CLASSES[sop_class]}"
    if sop_class.startswith(_NON_IMAGE_PREFIXES):
        return "other:structured report or presentation state"
    if not dataset.get("Rows") or not dataset.get("Columns"):
        return "other:no image rows/columns"
    return "image"
