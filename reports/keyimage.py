"""Key image: the measured slice with the outlines and the numbers burned in, as a Secondary Capture in the source
study (same patient, same study, its own series). It is what a radiologist sees first on a PACS that renders
neither SR nor SEG, so everything needed to read the result is in the pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.valuerep import DA, TM

from reports.instance import NewInstance
from reports.overlay import outlined_rgb
from reports.source import displayed_frame

MIN_SHORT_SIDE = 512  # upscale small MR matrices so the burned-in text stays legible beside the anatomy


def render_key_image(image: np.ndarray, masks: dict[str, np.ndarray], lines: list[str],
                     orientation: tuple[str, str]) -> np.ndarray:
    """An RGB uint8 picture of `image` (any numeric 2D array) with mask outlines and text lines burned in.

    The picture is `image` scaled by an integer factor (so outlines stay on pixel edges); `orientation` gives the
    patient directions of the rows and columns (e.g. ("L", "P")) for the side markers.
    """
    factor = max(1, math.ceil(MIN_SHORT_SIDE / min(image.shape)))
    rgb = outlined_rgb(image, masks, factor)

    picture = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, picture.height // 36))
    y = 4
    for line in lines:
        for part in _wrap(draw, font, line, picture.width - 12):
            draw.text((6, y), part, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
            y += int(font.size * 1.25)
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
    row_direction = orientation[0]
    middle = picture.height // 2
    draw.text((6, middle), opposite.get(row_direction, ""), fill=(255, 255, 0), font=font,
              stroke_width=2, stroke_fill=(0, 0, 0))
    draw.text((picture.width - font.size, middle), row_direction, fill=(255, 255, 0), font=font,
              stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(picture, dtype=np.uint8)


def _wrap(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont, line: str, width: int) -> list[str]:
    """Break a line at spaces so that each part fits `width` pixels (a long reason sentence would be cut off)."""
    parts: list[str] = []
    for word in line.split(" "):
        candidate = f"{parts[-1]} {word}" if parts else word
        if parts and draw.textlength(candidate, font=font) <= width:
            parts[-1] = candidate
        else:
            parts.append(word)
    return parts


def summary_lines(result: dict[str, Any], algorithm_name: str, algorithm_version: str) -> list[str]:
    """The numbers a reader needs, in words."""
    status = result["status"]
    lines = []
    if result.get("plvi") is not None:
        flag = "LOW PSOAS MASS" if result.get("low_psoas_mass") else "not low"
        lines.append(f"PLVI {result['plvi']:.2f} (cut-off {result['cutoff']:.2f}): {flag}")
    areas = [
        f"{label} {result[key]:.0f} mm2"
        for label, key in (("L psoas", "psoas_left_mm2"), ("R psoas", "psoas_right_mm2"), ("L4 body", "vertebra_mm2"))
        if result.get(key) is not None
    ]
    if areas:
        lines.append("  ".join(areas))
    if status != "ok":
        reason = result.get("reason_text") or result.get("reason") or ""
        lines.append(f"{status.upper().replace('_', ' ')}: {reason}".strip().rstrip(":"))
    lines.append(f"{algorithm_name} {algorithm_version} - screening aid, verify before use")
    return lines


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """The patient directions (LPS letters) of the image rows and columns, from ImageOrientationPatient."""
    return orientation_letters([float(value) for value in source.ImageOrientationPatient])


def orientation_letters(orientation: Sequence[float]) -> tuple[str, str]:
    """The patient directions (LPS letters) of the row and column direction cosines of ImageOrientationPatient."""
    letters = []
    for vector in (orientation[:3], orientation[3:]):
        axis = int(np.argmax(np.abs(vector)))
        positive, negative = ("L", "R") if axis == 0 else ("P", "A") if axis == 1 else ("H", "F")
        letters.append(positive if vector[axis] > 0 else negative)
    return letters[0], letters[1]


def build_key_image(
    result: dict[str, Any],
    masks: dict[str, np.ndarray],
    source: Dataset,
    instance: NewInstance,
) -> hd.sc.SCImage:
    """A Secondary Capture of `source` with the result burned in; patient and study are copied from `source`.

    A multi-frame source is shown by its middle frame (reports/source.py says when a source allows a key image)."""
    frame = displayed_frame(source)
    orientation = orientation_letters(frame.orientation)
    lines = summary_lines(result, instance.algorithm_name, instance.algorithm_version)
    pixels = render_key_image(frame.pixels, masks, lines, orientation)
    factor = pixels.shape[0] // frame.pixels.shape[0]
    pixel_spacing = None  # a source without PixelSpacing (not measurable) gives a key image without one
    if frame.pixel_spacing is not None:
        pixel_spacing = (frame.pixel_spacing[0] / factor, frame.pixel_spacing[1] / factor)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=instance.series_instance_uid,
        series_number=9003,
        sop_instance_uid=instance.sop_instance_uid,
        instance_number=1,
        manufacturer=instance.manufacturer,
        pixel_spacing=pixel_spacing,
        patient_orientation=orientation,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description="PLVI key image",
        **instance.dates(),
    )
    # highdicom stamps the capture time with now(); the analysis time keeps a retry byte-identical.
    capture.DateOfSecondaryCapture = DA(instance.content_datetime.date())
    capture.TimeOfSecondaryCapture = TM(instance.content_datetime.time())
    capture.BurnedInAnnotation = "YES"
    # General Series Laterality is Type 2C. dciodvfy reports it missing as an error when absent, and present but
    # empty only as a warning ("should be absent if an unpaired body part"): the lumbar spine is unpaired, and an
    # empty value says so without an error.
    capture.Laterality = None
    capture.ImageComments = " | ".join(lines)[:10240]
    return capture
