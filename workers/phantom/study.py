"""generate_study: one synthetic lumbar MRI study as DICOM files, with its truth (truth.json, truth_masks.npz with
the reference slice's masks, truth_masks_by_slice.npz with every axial slice's, keys "<SOPInstanceUID>/<name>").

The truth and the rule that picks the reference slice are in `workers.phantom.truth`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from workers.phantom import dicom
from workers.phantom.acquisition import acquire, bias_field
from workers.phantom.anatomy import Anatomy, sample_anatomy
from workers.phantom.mri import tissue_signals
from workers.phantom.points import Points
from workers.phantom.protocol import (
    ROLES,
    Draws,
    PhantomOptions,
    draw_acquisition,
    draw_condition,
    draw_fat,
    draw_lumbar_count,
    series_header,
    series_planes,
    study_header,
)
from workers.phantom.stacks import stack
from workers.phantom.structures import truth_masks
from workers.phantom.truth import (
    MIN_VERTEBRA_SECTION_MM2,
    PhantomTruth,
    SeriesTruth,
    SliceTruth,
    distance_to_endplate,
    l4_endplate_rim,
    reference_slices,
    slab_top_to_endplate,
    slice_truth,
)


def generate_study(seed: int, out_dir: Path, options: PhantomOptions | None = None) -> PhantomTruth:
    """Write one phantom study (DICOM files in series folders, truth.json, truth_masks.npz,
    truth_masks_by_slice.npz) under out_dir."""
    options = options or PhantomOptions()
    out_dir = Path(out_dir)
    _remove_previous_phantom(out_dir)
    # independent random streams: what one part draws does not shift another (adding a localizer, say, leaves the
    # anatomy and the axial series as they were)
    rng = np.random.default_rng([seed, 0])  # the patient
    lumbar_count = options.lumbar_vertebrae or draw_lumbar_count(rng, options.hard)
    if lumbar_count not in (4, 5, 6):
        raise ValueError(f"lumbar_vertebrae must be 4, 5 or 6, not {lumbar_count}")
    condition = draw_condition(rng, options, lumbar_count)
    target_plvi = options.target_plvi or float(rng.uniform(0.4, 1.3))
    fat_fraction = options.fat_fraction if options.fat_fraction is not None else draw_fat(rng, options.hard)
    anatomy = sample_anatomy(
        rng,
        hard=options.hard,
        lumbar_count=lumbar_count,
        condition_above_l4=condition,
        target_plvi=target_plvi,
        fat_fraction=fat_fraction,
    )
    anatomy = _calibrate_psoas(anatomy, target_plvi)
    draws = draw_acquisition(np.random.default_rng([seed, 1]), options, anatomy)
    identity = (seed, repr(options))
    header_rng = np.random.default_rng([seed, 2])
    study = study_header(header_rng, seed, identity)
    bias = bias_field(anatomy, draws)

    series_truth: list[SeriesTruth] = []
    slices: list[SliceTruth] = []
    slice_masks: dict[str, dict[str, np.ndarray]] = {}
    roles = []
    if options.localizer:
        roles.append("localizer")
    if options.sagittal:
        roles.append(f"sagittal_{options.sagittal}")
    if options.axial_t2:
        roles.append("axial_t2")
    numbers = list(range(1, len(roles) + 1))
    if options.hard:
        numbers = [n * 100 + i for i, n in enumerate(numbers)] if header_rng.random() < 0.3 else numbers
    for role, number in zip(roles, numbers, strict=True):
        role_index = ROLES.index(role)
        rng = np.random.default_rng([seed, 10 + role_index])  # this series' protocol
        noise_rng = np.random.default_rng([seed, 20 + role_index])
        planes, sequence, nsub = series_planes(anatomy, options, draws, role, rng)
        signals = tissue_signals(sequence, anatomy.marrow_fat)
        parts = [planes]
        if role == "axial_t2" and draws.axial_layout == "per_disc" and draws.axial_series_per_stack:
            parts = [[p for p in planes if p.group == group] for group in sorted({p.group for p in planes})]
        serial = 0  # numbers the instances across the parts, for their UIDs
        written: list[Dataset] = []
        for part_index, part in enumerate(parts):
            split = len(parts) > 1
            part_number = number * 10 + part_index + 1 if split else number
            header = series_header(
                role, part_number, sequence, part, draws, identity, rng, part=part_index if split else None
            )
            for instance, plane in enumerate(part, start=1):
                serial += 1
                image, centre_layers = acquire(
                    anatomy, plane, signals, nsub, bias, draws, header.phase_direction, noise_rng
                )
                pixels = np.clip(np.rint(image * draws.scale), 0, 65535).astype(np.uint16)
                sop_uid = dicom.phantom_uid(*identity, role, "instance", serial)
                path = out_dir / f"series-{part_number:03d}-{role}" / f"IM-{instance:04d}.dcm"
                ds = dicom.mr_dataset(
                    pixels,
                    plane,
                    study=study,
                    series=header,
                    vendor=draws.vendor,
                    sop_uid=sop_uid,
                    instance_number=instance,
                    slice_location=float(np.dot(plane.centre, plane.normal)),
                    write_pixel_spacing=draws.pixel_spacing or role != "axial_t2",
                )
                dicom.write(ds, path)
                written.append(ds)
                if role == "axial_t2":
                    masks, areas = slice_truth(anatomy, plane, centre_layers)
                    slice_masks[sop_uid] = masks
                    slices.append(
                        SliceTruth(
                            sop_instance_uid=sop_uid,
                            series_instance_uid=header.uid,
                            instance_number=instance,
                            path=str(path.relative_to(out_dir)),
                            stack=plane.group,
                            psoas_left_mm2=areas["psoas_left"],
                            psoas_right_mm2=areas["psoas_right"],
                            vertebra_mm2=areas["vertebra"],
                            plvi=(areas["psoas_left"] + areas["psoas_right"]) / areas["vertebra"]
                            if areas["vertebra"] >= MIN_VERTEBRA_SECTION_MM2
                            else None,
                            distance_to_endplate_mm=distance_to_endplate(anatomy, plane),
                            slab_top_to_endplate_mm=slab_top_to_endplate(anatomy, plane),
                        )
                    )
            series_truth.append(SeriesTruth(header.uid, role, part_number, header.description, len(part)))
        if role == "axial_t2" and draws.derived_series:
            series_truth.append(_write_derived_series(out_dir, written, draws, identity, max(numbers) + 1))

    l4 = anatomy.vertebra("L4")
    endplate_point, endplate_normal = anatomy.upper_endplate("L4")
    reference, acceptable = reference_slices(slices, l4.s_top - l4.s_bottom)
    truth = PhantomTruth(
        seed=seed,
        study_instance_uid=study.study_uid,
        lumbar_vertebrae=lumbar_count,
        l4_upper_endplate_point_mm=tuple(round(float(x), 4) for x in endplate_point),
        l4_upper_endplate_normal=tuple(round(float(x), 6) for x in endplate_normal),
        endplate_concavity_mm=round(anatomy.endplate_concavity_mm, 4),
        l4_endplate_rim_mm=tuple(tuple(round(float(x), 4) for x in point) for point in l4_endplate_rim(anatomy)),
        l4_body_height_mm=round(l4.s_top - l4.s_bottom, 4),
        vertebra_condition=condition,
        series=tuple(series_truth),
        slices=tuple(slices),
        reference_sop_instance_uid=reference,
        acceptable_sop_instance_uids=tuple(acceptable),
        expected_reason=expected_reason(options, draws, reference),
        hard=options.hard,
        vendor=draws.vendor.manufacturer,
        axial_layout=draws.axial_layout if options.axial_t2 else None,
        masks=slice_masks.get(reference, {}) if reference else {},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "truth.json").write_text(json.dumps(truth.to_json(), indent=2) + "\n")
    np.savez_compressed(out_dir / "truth_masks.npz", **truth.masks)
    # every axial slice's masks, so that a measurement on an acceptable neighbour can be scored on its own slice
    np.savez_compressed(
        out_dir / "truth_masks_by_slice.npz",
        **{f"{uid}/{name}": mask for uid, masks in slice_masks.items() for name, mask in masks.items()},
    )
    return truth


def _write_derived_series(
    out_dir: Path, written: list[Dataset], draws: Draws, identity: tuple, number: int
) -> SeriesTruth:
    """A DERIVED reformat of the axial series with the same slice positions, in its own series."""
    role = "axial_t2_derived"
    description = draws.vendor.descriptions[role]
    series_uid = dicom.phantom_uid(*identity, role, "series")
    for instance, ds in enumerate(written, start=1):
        copy = dicom.derived_copy(
            ds,
            series_uid=series_uid,
            series_number=number,
            description=description,
            sop_uid=dicom.phantom_uid(*identity, role, "instance", instance),
        )
        copy.InstanceNumber = str(instance)
        dicom.write(copy, out_dir / f"series-{number:03d}-{role}" / f"IM-{instance:04d}.dcm")
    return SeriesTruth(series_uid, role, number, description, len(written))


def _remove_previous_phantom(out_dir: Path) -> None:
    """Delete what an earlier phantom wrote in this folder (its series folders and truth files, nothing else), so
    that regenerating with other options leaves no stale series behind."""
    truth_files = [out_dir / name for name in ("truth.json", "truth_masks.npz", "truth_masks_by_slice.npz")]
    for path in [*out_dir.glob("series-*-*/IM-*.dcm"), *truth_files]:
        path.unlink(missing_ok=True)
    for folder in out_dir.glob("series-*-*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _calibrate_psoas(anatomy: Anatomy, target_plvi: float) -> Anatomy:
    """Scale both psoas profiles so that PLVI just below the L4 endplate (parallel to it) equals the target."""
    point, normal = anatomy.upper_endplate("L4")
    depth = 3.5 + anatomy.endplate_concavity_mm
    plane = stack(point - depth * normal, normal, np.array([1.0, 0, 0]), [0.0], matrix=(160, 160), pixel_mm=1.0,
                  thickness=4.0)[0]
    masks = truth_masks(anatomy, Points.on_plane(anatomy, plane), "L4")
    plvi = (masks["psoas_left"].sum() + masks["psoas_right"].sum()) / max(masks["vertebra"].sum(), 1)
    factor = target_plvi / max(plvi, 1e-3)
    return replace(
        anatomy,
        psoas_left=replace(anatomy.psoas_left, area_mm2=anatomy.psoas_left.area_mm2 * factor),
        psoas_right=replace(anatomy.psoas_right, area_mm2=anatomy.psoas_right.area_mm2 * factor),
    )


def expected_reason(options: PhantomOptions, draws: Draws, reference: str | None) -> str | None:
    """The `reason` a correct analysis gives for this study being not measurable, or None when it is measurable."""
    if not options.axial_t2:
        return "no_axial_t2"
    if not draws.pixel_spacing:
        return "no_pixel_spacing"
    if reference is None:
        return "l4_not_covered"
    return None


# --- draws -----------------------------------------------------------------------------------------------------------
