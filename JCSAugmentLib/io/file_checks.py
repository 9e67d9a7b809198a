"""Checks a volume file must pass before its voxels are decoded: size budget and completeness.

Two ways a volume file can do harm before any voxel is looked at:

* **A header that claims a huge image.**  A few kilobytes can claim 1400^3 float32 voxels; ITK
  then allocates the whole buffer (and we copy it), and the process is killed for memory with
  no message.  :func:`check_volume_file` reads the header only (SimpleITK's
  ``ReadImageInformation``), computes the bytes the decoded array will take, and refuses a file
  above the budget: ``JCSAUGMENT_MAX_VOLUME_GB`` (gigabytes, decimal) or, when that is not set,
  the smaller of 8 GB and a quarter of this machine's memory.
* **An incomplete file.**  ITK zero-fills what a truncated ``.nii.gz`` (or raw / compressed
  NRRD and MetaImage payload) lacks and reports success, so a half-zero image would be trained
  on or segmented.  The compressed stream is decompressed to its end here (gzip checks its
  CRC32 and length trailer; zlib its Adler-32) and the decoded payload is compared with the
  size the header implies; a raw payload is compared by file size.

Everything raises :class:`~JCSAugmentLib.io.volume.VolumeError` naming the file.  The check
costs one extra pass of decompression over a compressed file.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import SimpleITK as sitk

__all__ = ["MAX_VOLUME_GB_ENV", "VolumeHeader", "volume_budget_bytes", "check_volume_file"]

#: environment variable that sets the largest decoded volume accepted, in gigabytes (1e9 bytes)
MAX_VOLUME_GB_ENV = "JCSAUGMENT_MAX_VOLUME_GB"
#: the budget when the variable is not set is the smaller of this and a quarter of the memory
DEFAULT_MAX_VOLUME_BYTES = 8 * 10 ** 9

_CHUNK = 1 << 20


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume file's header says, read without decoding a voxel."""
    path: str
    dimension: int
    size: Tuple[int, ...]
    components: int
    pixel_type: str
    #: bytes of the decoded array this program keeps (float32 images, int64 label maps)
    decoded_bytes: int


def _error(path: str, problem: str):
    from .volume import VolumeError  # volume.py imports this module
    return VolumeError(path, problem)


def _physical_memory() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def volume_budget_bytes() -> int:
    """The largest decoded volume accepted, in bytes (see the module docstring)."""
    raw = os.environ.get(MAX_VOLUME_GB_ENV, "").strip()
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = float("nan")
        if not gb > 0 or gb == float("inf"):
            raise _error(MAX_VOLUME_GB_ENV, f"must be a positive number of gigabytes, got "
                                            f"{raw!r}")
        return int(gb * 10 ** 9)
    memory = _physical_memory()
    return min(DEFAULT_MAX_VOLUME_BYTES, memory // 4) if memory else DEFAULT_MAX_VOLUME_BYTES


def _gb(n: int) -> str:
    return f"{n / 10 ** 9:.3g} GB"


def _bytes_per_value(pixel_type: str) -> int:
    """Bytes of one stored component value from SimpleITK's pixel type string."""
    m = re.search(r"(\d+)-bit", pixel_type)
    n = int(m.group(1)) // 8 if m else 8
    return max(1, n) * (2 if "complex" in pixel_type else 1)


def read_header(path: str, kind: str = "image") -> VolumeHeader:
    """The header of ``path`` (SimpleITK ``ReadImageInformation``: no voxel is read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except Exception as exc:  # RuntimeError with a long ITK trace
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:300] + " ..."
        raise _error(path, f"SimpleITK could not read the header ({detail})") from None
    size = tuple(int(s) for s in reader.GetSize())
    components = max(1, int(reader.GetNumberOfComponents()))
    pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    voxels = 1
    for s in size:
        voxels *= max(s, 0)
    kept = 8 if kind == "label" else 4  # int64 label maps, float32 images
    decoded = voxels * components * max(_bytes_per_value(pixel_type), kept)
    return VolumeHeader(path, int(reader.GetDimension()), size, components, pixel_type, decoded)


def check_volume_file(path: str, kind: str = "image",
                      budget_bytes: Optional[int] = None) -> VolumeHeader:
    """Check ``path`` before its voxels are decoded; returns its header.

    ``kind`` is ``"image"`` or ``"label"`` (label maps are kept as int64, so they take more).
    Raises :class:`VolumeError` for a header that cannot be read, a decoded size above
    ``budget_bytes`` (default :func:`volume_budget_bytes`), or a payload that is shorter than
    the header implies, truncated or corrupt.
    """
    path = os.fspath(path)
    header = read_header(path, kind)
    budget = volume_budget_bytes() if budget_bytes is None else int(budget_bytes)
    if header.decoded_bytes > budget:
        raise _error(path, f"its header claims {' x '.join(map(str, header.size))} voxels of "
                           f"{header.pixel_type} ({header.components} component(s)), "
                           f"{_gb(header.decoded_bytes)} once decoded, more than the "
                           f"{_gb(budget)} allowed for one volume; set {MAX_VOLUME_GB_ENV} to "
                           f"allow more (if this machine has the memory) or check the file")
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif lower.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif lower.endswith((".mha", ".mhd")):
        _check_metaimage(path)
    return header


# ----------------------------------------------------------------------------- streams

def _gzip_length(path: str, offset: int = 0) -> int:
    """Decompressed length of the gzip stream starting at ``offset``; raises VolumeError for a
    truncated or corrupt stream (the gzip module checks the CRC32 and length trailer)."""
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(offset)
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                while True:
                    chunk = fh.read(_CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
    except EOFError:
        raise _error(path, "the compressed data is truncated (the gzip stream ends before its "
                           "end marker): the file is incomplete; copy or export it again"
                     ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise _error(path, f"the compressed data is corrupt ({e}); copy or export the file "
                           f"again") from None
    return total


def _detached_length(header: str, data_file: str, offset: int) -> int:
    """:func:`_zlib_length` of a detached data file, its errors naming the header file the
    user gave (and the data file)."""
    from .volume import VolumeError
    if data_file == header:
        return _zlib_length(data_file, offset)
    try:
        return _zlib_length(data_file, offset)
    except VolumeError as e:
        raise _error(header, f"its data file {data_file}: {e.problem}") from None


def _zlib_length(path: str, offset: int) -> int:
    """Decompressed length of the zlib (or gzip) stream at ``offset``; VolumeError when the
    stream does not reach its end marker (truncated) or fails its checksum."""
    d = zlib.decompressobj(wbits=47)  # 32 + 15: zlib or gzip header, detected
    total = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while not d.eof:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                total += len(d.decompress(chunk))
            total += len(d.flush()) if d.eof else 0
    except zlib.error as e:
        raise _error(path, f"the compressed data is corrupt ({e}); copy or export the file "
                           f"again") from None
    if not d.eof:
        raise _error(path, f"the compressed data is truncated (it ends after {total} decoded "
                           f"bytes, before the end of the stream): the file is incomplete; copy "
                           f"or export it again")
    return total


def _short(path: str, have: int, need: int, what: str = "voxel data") -> None:
    if have < need:
        raise _error(path, f"the {what} is incomplete: the header implies {need} bytes but the "
                           f"file holds {max(have, 0)}; the file was cut short (copy or export "
                           f"it again)")


# ----------------------------------------------------------------------------- NIfTI

@dataclass(frozen=True)
class NiftiLayout:
    """What the NIfTI-1/2 header says about the voxel data: byte order (``"<"`` / ``">"``),
    datatype code, bits per voxel, the image's dimensions and where the data starts."""

    endian: str
    datatype: int
    bitpix: int
    dims: Tuple[int, ...]
    data_offset: int

    @property
    def data_bytes(self) -> int:
        values = 1
        for d in self.dims:
            values *= max(int(d), 1)
        return values * self.bitpix // 8


def nifti_layout(head: bytes) -> Optional[NiftiLayout]:
    """The layout from the first 540 bytes of a NIfTI-1/2 header, or None (not NIfTI, or a
    header this cannot parse: ITK then decides)."""
    if len(head) < 348:
        return None
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        return None
    if sizeof_hdr == 348:  # NIfTI-1
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        dims = struct.unpack(endian + "8h", head[40:56])
        offset = int(struct.unpack(endian + "f", head[108:112])[0])
        header_len = 348
    else:  # NIfTI-2
        if len(head) < 540:
            return None
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dims = struct.unpack(endian + "8q", head[16:80])
        offset = int(struct.unpack(endian + "q", head[168:176])[0])
        header_len = 540
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    return NiftiLayout(endian, int(datatype), int(bitpix),
                       tuple(int(d) for d in dims[1:ndim + 1]), max(offset, header_len))


def _check_nifti(path: str) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        have = _gzip_length(path)  # also proves the stream complete
        with gzip.open(path, "rb") as fh:
            head = fh.read(540)
    else:
        have = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(540)
    layout = nifti_layout(head)
    if layout is not None:  # a detached .hdr/.img pair or an odd header: ITK decides
        _short(path, have - layout.data_offset, layout.data_bytes)


# ----------------------------------------------------------------------------- NRRD

_NRRD_TYPES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1,
    "uint8_t": 1, "short": 2, "short int": 2, "signed short": 2, "signed short int": 2,
    "int16": 2, "int16_t": 2, "ushort": 2, "unsigned short": 2, "unsigned short int": 2,
    "uint16": 2, "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4,
    "unsigned int": 4, "uint32": 4, "uint32_t": 4, "longlong": 8, "long long": 8,
    "long long int": 8, "signed long long": 8, "signed long long int": 8, "int64": 8,
    "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "unsigned long long int": 8,
    "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}


def _read_text_header(path: str, limit: int = 1 << 20) -> Tuple[bytes, int]:
    """(header bytes, offset of the data) for a NRRD: the header ends at the first blank
    line; a header with no blank line is all header (a detached .nhdr)."""
    with open(path, "rb") as fh:
        data = fh.read(limit)
    for sep in (b"\n\n", b"\r\n\r\n"):
        i = data.find(sep)
        if i >= 0:
            return data[:i], i + len(sep)
    return data, len(data)


def _check_nrrd(path: str) -> None:
    head, data_at = _read_text_header(path)
    fields: Dict[str, str] = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _sep, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        item = _NRRD_TYPES[fields["type"].lower()]
    except (KeyError, ValueError):
        return  # ITK has read the header; nothing more this check understands
    need = item
    for s in sizes:
        need *= max(s, 0)
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("data file") or fields.get("datafile")
    target, offset = path, data_at
    if data_file:
        if data_file.startswith("LIST") or "%" in data_file or len(data_file.split()) > 1:
            return  # a list or a pattern of files: ITK reads and checks those itself
        target = os.path.join(os.path.dirname(path), data_file)
        offset = 0
        if not os.path.isfile(target):
            raise _error(path, f"its data file {target} does not exist")
    try:
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    except ValueError:
        skip = 0
    if encoding == "raw":
        have = os.path.getsize(target) - offset - max(skip, 0)
        _short(path, have, need)
    elif encoding in ("gzip", "gz"):
        have = _detached_length(path, target, offset) - max(skip, 0)
        _short(path, have, need, "decompressed voxel data")



# ----------------------------------------------------------------------------- MetaImage

_MET_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _check_metaimage(path: str) -> None:
    fields: Dict[str, str] = {}
    data_at = None
    with open(path, "rb") as fh:
        while True:
            line = fh.readline(1 << 16)
            if not line:
                break
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                data_at = fh.tell()
                break
    if data_at is None:
        return
    try:
        sizes = [int(s) for s in fields["dimsize"].split()]
        item = _MET_TYPES[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        return
    need = item * max(channels, 1)
    for s in sizes:
        need *= max(s, 0)
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LOCAL":
        target, offset = path, data_at
    elif data_file.upper().startswith("LIST") or "%" in data_file or len(data_file.split()) > 1:
        return
    else:
        target, offset = os.path.join(os.path.dirname(path), data_file), 0
        if not os.path.isfile(target):
            raise _error(path, f"its data file {target} does not exist")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if compressed:
        _short(path, _detached_length(path, target, offset), need, "decompressed voxel data")
    else:
        try:
            header_size = int(fields.get("headersize", "0"))
        except ValueError:
            header_size = 0
        if header_size > 0 and target != path:
            offset = header_size
        _short(path, os.path.getsize(target) - offset, need)
