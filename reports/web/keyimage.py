"""The key image the study page shows: the measured slice with the three outlines drawn on it.

Rendered from the stored source slice (spool) and the stored masks (results/<study>/<instance set>/masks.npz,
arrays psoas_left, psoas_right, vertebra as `plvi analyze --out` writes them), so the page shows exactly what
was measured."""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
from PIL import Image
from sqlmodel import Session, select

from plvi.logs import kv
from plvi.models import Analysis, Instance
from plvi.settings import Settings
from reports.masks import load_masks
from reports.overlay import outlined_rgb

log = logging.getLogger(__name__)

DISPLAY_SIZE = 512


def render_key_image(image: np.ndarray, masks: dict[str, np.ndarray]) -> bytes:
    """PNG of `image` enlarged to about 512 px, with each mask's outline."""
    buffer = io.BytesIO()
    Image.fromarray(outlined_rgb(image, masks, max(1, DISPLAY_SIZE // max(image.shape))), mode="RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def key_image_png(settings: Settings, session: Session, analysis: Analysis) -> bytes | None:
    """The key image of an analysis, or None when it measured no slice or the slice is no longer stored."""
    sop_uid = ((analysis.result or {}).get("slice") or {}).get("sop_instance_uid")
    if not sop_uid:
        return None
    instance = session.exec(select(Instance).where(Instance.sop_instance_uid == sop_uid)).first()
    if instance is None or not (settings.data_dir / instance.path).is_file():
        log.warning(kv("key_image_source_missing", study_uid=analysis.study_instance_uid, sop_uid=sop_uid))
        return None
    dataset = pydicom.dcmread(settings.data_dir / instance.path)
    image = dataset.pixel_array
    if image.ndim != 2:  # a multi-frame object: the measured frame is not recorded; show none rather than a wrong one
        return None
    return render_key_image(image, load_masks(settings, analysis.study_instance_uid, analysis.instance_set_hash))
