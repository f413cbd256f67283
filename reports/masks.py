"""Where an analysis's masks are kept: results/<study>/<instance set>/masks.npz, bool arrays psoas_left,
psoas_right and vertebra on the measured slice. The worker and `plvi analyze --out` write them, the dashboard reads them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from plvi.settings import Settings


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


def load_masks(settings: Settings, study_uid: str, instance_set_hash: str) -> dict[str, np.ndarray]:
    """The stored masks of an analysis; empty when it measured no slice."""
    stored = masks_path(settings, study_uid, instance_set_hash)
    if not stored.is_file():
        return {}
    with np.load(stored) as archive:
        return {name: archive[name] for name in archive.files}
