"""What a received data set must be before we store it, checked on the bytes as received (pydicom, no network).

Refusals carry their C-STORE status: PS3.4 Annex B.2.3 gives A700 for out of resources, A900 for a data set that
does not match its SOP class and the C000-CFFF range for "cannot understand"; the low digits there are ours and say
which check failed.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timezone
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from listener.records import InstanceRecord
from listener.spool import is_safe_uid

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_PARSE = 0xC000
MISSING_OR_INVALID_UID = 0xC001
SOP_INSTANCE_UID_MISMATCH = 0xC002

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_INFLATED_BYTES = 1024 * 2**20


class BadInstance(Exception):
    """A data set we refuse, with the status to answer and the reason for the log and the quarantine note."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_header(data: bytes | memoryview, transfer_syntax: str) -> Dataset:
    """Parse the data set as received, checking that it is complete; pixel data stays undecoded bytes."""
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:  # PS3.5 A.5: the whole data set is raw deflate
            data = _inflate(data)
        implicit = transfer_syntax == ImplicitVRLittleEndian
        if _looks_explicit(data) == implicit:
            # pydicom would silently read it the other way, and the file would then lie about its encoding.
            raise BadInstance(CANNOT_PARSE, f"data set is not encoded as negotiated ({UID(transfer_syntax).name})")
        dataset = read_dataset(BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
        keywords_present = [keyword for keyword in PIXEL_DATA_KEYWORDS if keyword in dataset]
        last = dataset.get_item(next(reversed(dataset.keys()))) if len(dataset) else None  # raw, as read
    except BadInstance:
        raise
    except Exception as error:
        raise BadInstance(CANNOT_PARSE, f"data set cannot be parsed: {error}") from error
    if not keywords_present or last is None:
        raise BadInstance(CANNOT_PARSE, "data set has no pixel data: not an image, or truncated")
    # pydicom reads a cut-off last element silently; its declared length tells the truth.
    declared = getattr(last, "length", None)
    if declared not in (None, UNDEFINED_LENGTH) and last.value is not None and len(last.value) != declared:
        raise BadInstance(CANNOT_PARSE, f"data set is truncated: element {last.tag} declares {declared} bytes")
    return dataset


def _looks_explicit(data: bytes | memoryview) -> bool:
    """True when the first element carries a VR (two upper-case letters after the tag, PS3.5 7.1.2)."""
    vr = bytes(data[4:6])
    return len(vr) == 2 and vr.isalpha() and vr.isupper()


def _inflate(data: bytes | memoryview) -> bytes:
    """Inflate a deflated data set for reading, refusing a "zip bomb" that would exhaust memory."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(data, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail:
        raise BadInstance(CANNOT_PARSE, f"deflated data set inflates beyond {MAX_INFLATED_BYTES // 2**20} MB")
    return inflated


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def record_for(
    dataset: Dataset,
    *,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
    calling_ae: str,
    transfer_syntax: str,
) -> InstanceRecord:
    """Check the identifiers a stored instance must have against the C-STORE request and build its database record
    (path, size and hash are filled in once the file is written)."""
    uids = {keyword: _text(dataset, keyword) for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    missing = [keyword for keyword, uid in uids.items() if not uid]
    if missing:
        raise BadInstance(MISSING_OR_INVALID_UID, f"data set lacks {', '.join(missing)}")
    unsafe = [f"{keyword}={uid!r}" for keyword, uid in uids.items() if not is_safe_uid(uid)]
    if unsafe:
        raise BadInstance(MISSING_OR_INVALID_UID, f"not a valid UID: {', '.join(unsafe)}")
    if uids["SOPInstanceUID"] != affected_sop_instance_uid.strip():
        raise BadInstance(
            SOP_INSTANCE_UID_MISMATCH,
            f"SOPInstanceUID {uids['SOPInstanceUID']} differs from the request's {affected_sop_instance_uid}",
        )
    sop_class = _text(dataset, "SOPClassUID")
    if sop_class != affected_sop_class_uid.strip():
        raise BadInstance(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID {sop_class or '(none)'} differs from the request's {affected_sop_class_uid}",
        )
    series_number = dataset.get("SeriesNumber")
    return InstanceRecord(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        path="",
        size_bytes=0,
        sha256="",
        calling_ae=calling_ae,
        received_at=datetime.now(timezone.utc),
        patient_id=_text(dataset, "PatientID"),
        accession_number=_text(dataset, "AccessionNumber"),
        study_date=_text(dataset, "StudyDate"),
        modality=_text(dataset, "Modality"),
        series_number=int(series_number) if isinstance(series_number, (int, float)) else None,
        series_description=_text(dataset, "SeriesDescription"),
    )
