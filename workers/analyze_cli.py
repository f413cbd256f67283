"""`plvi analyze PATH... [--json] [--out DIR]`: one study from files, no server, the same code as the worker."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from plvi.settings import Settings
from reports.masks import write_masks
from reports.objects import build_result_objects, write_named_files
from reports.overlay import outlined_rgb
from workers.pipeline import ALGORITHM_VERSION, StudyAnalysis, analyze_paths, result_json
from workers.study_files import StudyFilesError, read_dataset


def analyze_command(paths: list[Path], settings: Settings, json_output: bool, out: Path | None) -> int:
    """Run the analysis; 0 when a result object was produced (whatever its status), 2 when the input is unusable."""
    # highdicom narrates every attribute it copies at INFO; an operator at a terminal needs only the result.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    try:
        analysis = analyze_paths(paths, settings.cutoff)
    except StudyFilesError as error:
        print(f"plvi analyze: {error}", file=sys.stderr)
        return 2
    text = result_json(analysis.result, indent=2)
    if out is not None:
        write_outputs(analysis, out, text)
    if json_output:
        print(text)
    else:
        print(_summary(analysis.result))
        if out is not None:
            print(f"written to {out}/: " + ", ".join(sorted(path.name for path in out.iterdir())))
    return 0


def write_outputs(analysis: StudyAnalysis, out: Path, result_json: str) -> None:
    """result.json and the SR always (a study that was not measurable is still reported as screened); overlay.png,
    masks.npz, the SEG and the key image when a slice was segmented."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(result_json + "\n")
    if analysis.masks and analysis.image is not None:
        write_masks(out / "masks.npz", analysis.masks)
        overlay_image(analysis.image, analysis.masks).save(out / "overlay.png")
    source_path = analysis.source_path or analysis.study_image_path
    if source_path is not None:
        objects = build_result_objects(
            analysis.result, analysis.masks, read_dataset(source_path), algorithm_version=ALGORITHM_VERSION
        )
        write_named_files(objects, out)


def overlay_image(image: np.ndarray, masks: dict[str, np.ndarray]) -> Image.Image:
    """The slice as stored (row 0 at the top, not enlarged) with the outline of each mask and a legend."""
    picture = Image.fromarray(outlined_rgb(image, masks, 1))
    ImageDraw.Draw(picture).text((4, 4), "L psoas red, R psoas blue, L4 body yellow", fill=(255, 255, 255))
    return picture


def _summary(result: dict[str, Any]) -> str:
    lines = [f"study {result['study_instance_uid']}: {result['status']}"]
    if result["reason"]:
        lines.append(f"  {result['reason']}: {result['reason_text']}")
    if result["plvi"] is not None:
        lines.append(
            f"  PLVI {result['plvi']:.3f} (left psoas {result['psoas_left_mm2']:.0f} mm2, right psoas "
            f"{result['psoas_right_mm2']:.0f} mm2, L4 body {result['vertebra_mm2']:.0f} mm2); cut-off "
            f"{result['cutoff']}: {'LOW psoas mass' if result['low_psoas_mass'] else 'not low'}"
        )
    if result["level"]:
        endplate = result["level"]["l4_upper_endplate"]
        lines.append(f"  L4 upper endplate at {endplate['point_mm']} mm (LPS), normal {endplate['normal']}")
    if result["slice"]:
        lines.append(
            f"  slice: instance {result['slice']['instance_number']}, "
            f"{result['slice']['slice_to_endplate_mm']} mm below the endplate"
        )
    return "\n".join(lines)
