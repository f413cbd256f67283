"""The DICOM objects of one analysis (SR, SEG, key image), built deterministically, and their files.

Identity and the supersede policy
---------------------------------
Every UID is derived, never random: `2.25.<hash>` of (study UID, instance set hash, algorithm version, object
kind). The content, series and capture dates and times are the analysis time. So:

- a retry of the same analysis (same instance set, same algorithm) rebuilds byte-identical objects with the same
  SOP Instance UIDs: a PACS that receives them twice keeps one copy, and the outbox key (SOP UID + destination)
  makes the second send a no-op;
- a re-analysis (instances added to the study, or a new algorithm version) yields new SOP and Series UIDs: the new
  objects arrive as a new series beside the old ones and never reuse an old UID with different content (PS3.3
  C.12.1.1.1). The new SR is the current one; the database's `Analysis.superseded` says which. Deliveries of the
  older objects that have not gone out yet are cancelled (`reports.sender.enqueue_delivery`); objects already on
  the PACS stay there (C-STORE cannot delete), and each carries its own content date so readers can tell them
  apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.valuerep import DA, DT, TM

from plvi.logs import kv
from reports.instance import NewInstance
from reports.keyimage import build_key_image
from reports.seg import STRUCTURES, build_segmentation
from reports.source import copyable_source, key_image_obstacle, segmentation_obstacle
from reports.sr import build_sr

ALGORITHM_NAME = "PLVI screening"
MANUFACTURER = "PLVI screening service"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObjects:
    """The objects of one analysis; `seg` is None when there are no masks (e.g. `not_measurable`) and, like
    `key_image`, when the source cannot carry it (reports/source.py)."""

    sr: Dataset
    seg: Dataset | None
    key_image: Dataset | None

    def datasets(self) -> list[Dataset]:
        return [ds for ds in (self.sr, self.seg, self.key_image) if ds is not None]


def derived_uid(*parts: str) -> str:
    """A UID that is a pure function of `parts`: `2.25.` and a 128-bit integer from their SHA-256 (PS3.5 B.2).

    (pydicom's `generate_uid(prefix=None)` ignores its entropy sources and returns a random UUID.)"""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def build_result_objects(
    result: dict[str, Any],
    masks: dict[str, np.ndarray],
    source: Dataset,
    *,
    algorithm_version: str,
    instance_set_hash: str | None = None,
    analysed_at: datetime | None = None,
) -> ResultObjects:
    """SR, SEG and key image for one result object (DESIGN.md), in the source's study.

    Parameters
    ----------
    result:
        The result object; `status`, `cutoff` and, when measured, the areas, `plvi` and `low_psoas_mass`.
    masks:
        Bool arrays `psoas_left`, `psoas_right`, `vertebra` of the source's shape, or an empty dict.
    source:
        The measured slice with pixel data; for a result without one, any image of the study. Type 2 patient and
        study attributes it lacks, or whose value cannot be made valid, are written empty (reports/source.py); a
        source that cannot carry a SEG or key image (masks on a multi-frame image, no pixel data, no geometry)
        still gets its SR, and the log says which object was skipped and why.
    instance_set_hash:
        Names the analysed instance set (the worker passes the study's); defaults to `result["instance_set_hash"]`,
        else a hash of the result itself.
    analysed_at:
        The analysis time; defaults to `result["analysed_at"]` (ISO 8601), else now (then a rebuild differs).
    """
    source = copyable_source(source)
    study_uid = str(source.StudyInstanceUID)
    if result.get("study_instance_uid") not in (None, study_uid):
        raise ValueError(
            f"result is for study {result['study_instance_uid']} but the source image is from study {study_uid}"
        )
    identity = instance_set_hash or result.get("instance_set_hash") or _content_hash(result)
    moment = _analysis_time(result, analysed_at)

    def uid(kind: str) -> str:
        return derived_uid(study_uid, identity, algorithm_version, kind)

    def new_instance(kind: str) -> NewInstance:
        return NewInstance(uid(f"{kind}-series"), uid(kind), ALGORITHM_NAME, algorithm_version, MANUFACTURER, moment)

    has_masks = bool(masks) and all(masks.get(s.mask_key) is not None for s in STRUCTURES)
    segmentation = None
    if has_masks:
        obstacle = segmentation_obstacle(source)
        if obstacle is None:
            segmentation = build_segmentation(source, masks, new_instance("seg"))
        else:
            _log_skipped("seg", obstacle, study_uid, source)
    sr = build_sr(
        result,
        source,
        segmentation=segmentation,
        instance=new_instance("sr"),
        tracking_uids={key: uid(f"tracking-{key}") for key in [s.mask_key for s in STRUCTURES] + ["plvi"]},
        device_uid=derived_uid(ALGORITHM_NAME, algorithm_version),
    )
    key_image = None
    obstacle = key_image_obstacle(source, with_masks=has_masks)
    if obstacle is None:
        key_image = build_key_image(result, masks if has_masks else {}, source, new_instance("keyimage"))
    else:
        _log_skipped("keyimage", obstacle, study_uid, source)
    for kind, dataset in (("sr", sr), ("seg", segmentation), ("keyimage", key_image)):
        if dataset is not None:
            _pin_generated_values(dataset, moment, uid(f"{kind}-dimension-organization"))
    return ResultObjects(sr=sr, seg=segmentation, key_image=key_image)


def _log_skipped(kind: str, why: str, study_uid: str, source: Dataset) -> None:
    """The SR still reports the result; the log says which object is missing and why."""
    log.info(kv("result_object_skipped", kind=kind, why=why, study_uid=study_uid,
                source_sop_instance_uid=source.get("SOPInstanceUID", "")))


def _pin_generated_values(dataset: Dataset, moment: datetime, dimension_organization_uid: str) -> None:
    """Replace what highdicom stamps from the clock or a random UID with the analysis time and derived UIDs."""
    dataset.InstanceCreationDate = DA(moment.date())
    dataset.InstanceCreationTime = TM(moment.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = DT(moment)
    for item in dataset.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dimension_organization_uid
    for item in dataset.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dimension_organization_uid


def write_result_objects(objects: ResultObjects, results_dir: Path) -> list[Path]:
    """Write each object to `<results_dir>/<StudyUID>/<SOPInstanceUID>.dcm` durably, for the sender.

    Rewriting identical objects is harmless: the same UIDs name the same bytes."""
    return [
        write_durably(dataset, results_dir / str(dataset.StudyInstanceUID) / f"{dataset.SOPInstanceUID}.dcm")
        for dataset in objects.datasets()
    ]


def write_named_files(objects: ResultObjects, folder: Path) -> list[Path]:
    """Write `sr.dcm`, `seg.dcm` and `keyimage.dcm` (those that exist) into `folder`, for `plvi analyze --out`."""
    named = (("sr.dcm", objects.sr), ("seg.dcm", objects.seg), ("keyimage.dcm", objects.key_image))
    return [write_durably(dataset, folder / name) for name, dataset in named if dataset is not None]


def write_durably(dataset: Dataset, path: Path) -> Path:
    """Part 10 file via a temporary file, fsync and rename, so a crash never leaves half an object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    dataset.save_as(temporary, enforce_file_format=True)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)
    return path


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _content_hash(result: dict[str, Any]) -> str:
    stable = {key: value for key, value in result.items() if key != "timings_ms"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


def _analysis_time(result: dict[str, Any], analysed_at: datetime | None) -> datetime:
    if analysed_at is None and result.get("analysed_at"):
        analysed_at = datetime.fromisoformat(str(result["analysed_at"]))
    if analysed_at is None:
        analysed_at = datetime.now(timezone.utc)
    # DICOM dates and times carry no zone here; write UTC so every host writes the same bytes.
    if analysed_at.tzinfo is not None:
        analysed_at = analysed_at.astimezone(timezone.utc).replace(tzinfo=None)
    return analysed_at
