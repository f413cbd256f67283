"""The key image the study page shows: the measured slice with the three outlines drawn on it.

Rendered from the stored source slice (spool) and the stored masks (results/<study>/<instance set>/masks.npz,
arrays psoas_left, psoas_right, vertebra as `plvi analyze --out` writes them), so the page shows exactly what
was measured."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from sqlmodel import Session, select

from plvi.logs import kv
from plvi.models import Analysis, Instance
from plvi.settings import Settings
from reports.overlay import outlined_rgb

log = logging.getLogger(__name__)

DISPLAY_SIZE = 512


def masks_path(settings: Settings, study_uid: str, instance_set_hash: str) -> Path:
    return settings.results_dir / study_uid / instance_set_hash / "masks.npz"


def store_masks(settings: Settings, study_uid: str, instance_set_hash: str, masks: dict[str, np.ndarray]) -> Path:
    """Keep an analysis's masks where the dashboard's key image finds them (the worker calls this when it stores
    the Analysis row)."""
    return write_masks(masks_path(settings, study_uid, instance_set_hash), masks)


def write_masks(target: Path, masks: dict[str, np.ndarray]) -> Path:
    """The masks as one .npz of bool arrays, written to a temporary file and renamed, so a reader never sees half a
    file (the worker's store and `plvi analyze --out` write the same format)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.savez_compressed(handle, **{name: np.asarray(mask, dtype=bool) for name, mask in masks.items()})
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target


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
    stored = masks_path(settings, analysis.study_instance_uid, analysis.instance_set_hash)
    masks: dict[str, np.ndarray] = {}
    if stored.is_file():
        with np.load(stored) as archive:
            masks = {name: archive[name] for name in archive.files}
    return render_key_image(image, masks)
