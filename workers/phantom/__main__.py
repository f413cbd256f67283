"""Write phantom studies from the command line: python -m workers.phantom OUT_DIR [--seeds 1-20] [--hard] ..."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from workers.phantom.study import PhantomOptions, generate_study


def _seeds(text: str) -> list[int]:
    """'7' or '1-20' or '1,4,9'."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.phantom", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="one sub-folder per seed is written here")
    parser.add_argument("--seeds", type=_seeds, default=[1], help="e.g. 7, 1-20 or 1,4,9")
    parser.add_argument("--hard", action="store_true", help="bias, noise, tilt, fractures, fatty muscle, traps")
    parser.add_argument("--layout", choices=["stack", "per_disc"], default=None)
    parser.add_argument("--sagittal", choices=["t2", "t1", "none"], default="t2")
    parser.add_argument("--no-localizer", action="store_true")
    arguments = parser.parse_args(argv)
    options = PhantomOptions(
        hard=arguments.hard,
        axial_layout=arguments.layout,
        sagittal=None if arguments.sagittal == "none" else arguments.sagittal,
        localizer=not arguments.no_localizer,
    )
    for seed in arguments.seeds:
        started = time.perf_counter()
        truth = generate_study(seed, arguments.out_dir / f"phantom-{seed:04d}", options)
        plvi = "-" if truth.plvi is None else f"{truth.plvi:.3f}"
        print(
            f"seed={seed} plvi={plvi} slices={len(truth.slices)} lumbar={truth.lumbar_vertebrae} "
            f"expected_reason={truth.expected_reason} seconds={time.perf_counter() - started:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
