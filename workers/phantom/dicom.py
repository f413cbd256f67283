"""Vendor-like MR Image Storage files: one single-frame file per slice, geometry written exactly.

The module list follows the MR Image IOD (PS3.3 A.4): Patient, General Study, Patient Study, General Series,
Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel, MR Image, SOP Common.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from workers.phantom.stacks import SlicePlane

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's documented prefix for generated UIDs


def phantom_uid(*parts: object) -> str:
    """A UID that depends only on `parts` (seed, options, role): the same study regenerates the same UIDs."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["plvi-phantom", *map(str, parts)])


@dataclass(frozen=True)
class Vendor:
    """What one manufacturer writes into the headers of a lumbar protocol."""

    manufacturer: str
    model: str
    software: str
    field_strength: float
    descriptions: dict[str, str]  # role -> SeriesDescription
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    image_type: tuple[str, ...]
    sequence_names: dict[str, str]
    axial_feet_first: bool  # order in which the axial stack is numbered
    max_value: int  # typical stored maximum


VENDORS: dict[str, Vendor] = {
    "siemens": Vendor(
        "SIEMENS",
        "Aera",
        "syngo MR E11",
        1.5,
        {
            "localizer": "localizer",
            "sagittal_t2": "t2_tse_sag",
            "sagittal_t1": "t1_tse_sag",
            "axial_t2": "t2_tse_tra",
            "axial_t2_derived": "t2_tse_tra_MPR",
        },
        ("SK", "SP", "OSP"),
        ("PFP", "SAT1"),
        ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"),
        {"T2": "*tse2d1_17", "T1": "*tse2d1_3", "localizer": "*fl2d1"},
        True,
        1400,
    ),
    "ge": Vendor(
        "GE MEDICAL SYSTEMS",
        "SIGNA Explorer",
        "27\\LX\\MR Software release:RX27.0",
        1.5,
        {
            "localizer": "3-pl loc",
            "sagittal_t2": "SAG T2 FSE",
            "sagittal_t1": "SAG T1 FSE",
            "axial_t2": "AX T2 FSE",
            "axial_t2_derived": "AX T2 FSE REFORMAT",
        },
        ("SK", "OSP"),
        ("FAST_GEMS", "SAT_GEMS"),
        ("ORIGINAL", "PRIMARY", "OTHER"),
        {"T2": "fse-xl", "T1": "fse-xl", "localizer": "fgre"},
        False,
        3200,
    ),
    "philips": Vendor(
        "Philips Medical Systems",
        "Ingenia",
        "5.7.1",
        3.0,
        {
            "localizer": "Survey",
            "sagittal_t2": "T2W_TSE_SAG",
            "sagittal_t1": "T1W_TSE_SAG",
            "axial_t2": "T2W_TSE",
            "axial_t2_derived": "MPR T2W_TSE",
        },
        ("SK",),
        ("FS",),
        ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
        {"T2": "TSE", "T1": "TSE", "localizer": "FFE"},
        True,
        2400,
    ),
}


@dataclass(frozen=True)
class StudyHeader:
    """Patient and study attributes shared by every file of one phantom study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    weight_kg: float
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    frame_of_reference_uid: str


@dataclass(frozen=True)
class SeriesHeader:
    """Series attributes: identity, description and acquisition parameters."""

    uid: str
    number: int
    description: str
    weighting: str  # "T2" | "T1" | "localizer"
    repetition_time_ms: float
    echo_time_ms: float
    echo_train_length: int
    spacing_between_slices: float
    phase_direction: str  # "ROW" | "COL"
    localizer: bool = False


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text if len(text) <= 16 else f"{value:.8g}"


def mr_dataset(
    pixels: np.ndarray,
    plane: SlicePlane,
    *,
    study: StudyHeader,
    series: SeriesHeader,
    vendor: Vendor,
    sop_uid: str,
    instance_number: int,
    slice_location: float,
    write_pixel_spacing: bool = True,
) -> Dataset:
    """One MR Image Storage data set with consistent Image Plane attributes (PS3.3 C.7.6.2)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    image_type = list(vendor.image_type)
    if series.localizer:
        image_type = ["ORIGINAL", "PRIMARY", "LOCALIZER"] if vendor.manufacturer != "SIEMENS" else image_type
    ds.ImageType = image_type
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.study_time
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = f"{int(study.study_time[:2]):02d}{series.number % 60:02d}00"
    ds.AccessionNumber = study.accession
    ds.Modality = "MR"
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = "PLVI Phantom Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM01"
    ds.StudyDescription = "MR LUMBAR SPINE"
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = vendor.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.PatientAge = study.age
    ds.PatientWeight = _ds(study.weight_kg)
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = ["GR"] if series.weighting == "localizer" else ["SE"]
    ds.SequenceVariant = ["SP"] if series.weighting == "localizer" else list(vendor.sequence_variant)
    ds.ScanOptions = "" if series.weighting == "localizer" else list(vendor.scan_options)
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = vendor.sequence_names[series.weighting]
    ds.SliceThickness = _ds(plane.thickness)
    ds.RepetitionTime = _ds(series.repetition_time_ms)
    ds.EchoTime = _ds(series.echo_time_ms)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(42.577478 * vendor.field_strength)
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = _ds(vendor.field_strength)
    ds.SpacingBetweenSlices = _ds(series.spacing_between_slices)
    ds.EchoTrainLength = str(series.echo_train_length)
    ds.SoftwareVersions = vendor.software
    ds.ProtocolName = series.description
    ds.ReceiveCoilName = "Spine" if vendor.manufacturer != "GE MEDICAL SYSTEMS" else "CTL456"
    ds.InPlanePhaseEncodingDirection = series.phase_direction
    ds.FlipAngle = "150" if series.weighting != "localizer" else "20"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = str(series.number)
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = str(instance_number)
    ds.ImagePositionPatient = [_ds(x) for x in plane.position]
    ds.ImageOrientationPatient = [_ds(x) for x in (*plane.row_direction, *plane.column_direction)]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(slice_location)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    if write_pixel_spacing:
        ds.PixelSpacing = [_ds(plane.pixel_spacing[0]), _ds(plane.pixel_spacing[1])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    centre = float(np.percentile(pixels[::4, ::4], 75))
    ds.WindowCenter = _ds(round(centre))
    ds.WindowWidth = _ds(round(max(2.0 * centre, 1.0)))
    ds.PixelData = pixels.astype("<u2").tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def derived_copy(ds: Dataset, *, series_uid: str, series_number: int, description: str, sop_uid: str) -> Dataset:
    """The same slice as a DERIVED\\SECONDARY reformat in its own series (same positions): what a viewer's MPR or
    a scanner's "composed" series leaves in a study, and what series choice must skip."""
    copy = deepcopy(ds)
    copy.ImageType = ["DERIVED", "SECONDARY", "MPR"]
    copy.DerivationDescription = "multiplanar reformat of the acquired slices"
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = sop_uid
    copy.SeriesInstanceUID = series_uid
    copy.SeriesNumber = str(series_number)
    copy.SeriesDescription = copy.ProtocolName = description
    pixels = ndimage.gaussian_filter(ds.pixel_array.astype(np.float32), 0.8)  # resampling blurs a reformat
    copy.PixelData = np.rint(pixels).astype("<u2").tobytes()
    return copy


def write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
