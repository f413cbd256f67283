"""Psoas outlining details, on synthetic masks (1 mm grid)."""

from __future__ import annotations

import numpy as np

from workers.analysis.psoas import _fill_rimmed_fat_pockets

SHAPE = (80, 80)


def disc(row: float, column: float, radius: float) -> np.ndarray:
    rr, cc = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return (rr - row) ** 2 + (cc - column) ** 2 <= radius**2


def test_a_fat_streak_behind_a_thin_rim_of_muscle_is_filled() -> None:
    """The rim between the streak and the outside is darker than half-way but not clearly muscle, so the streak
    opens as a cleft in the clear muscle; it is intramuscular fat all the same."""
    muscle = disc(40, 40, 15)
    streak = disc(48, 40, 4.5)
    rim = muscle & ~streak
    clear = rim & ~(disc(54, 40, 3) & ~streak)  # the thin rim below the streak is not clearly muscle
    filled = _fill_rimmed_fat_pockets(clear, np.ones(SHAPE, dtype=bool), rim)
    assert filled[streak].all()
    assert not filled[~muscle].any()


def test_fat_enclosed_by_vessel_walls_is_not_filled() -> None:
    """Fat inside a ring of tissue darker than half-way that is not clear muscle (a vessel wall, bowel) stays
    out, even when clear muscle touches the ring on one side."""
    wall = disc(40, 40, 7) & ~disc(40, 40, 4)
    clear = disc(40, 58, 11)
    filled = _fill_rimmed_fat_pockets(clear, np.ones(SHAPE, dtype=bool), clear | wall)
    assert not filled[disc(40, 40, 4)].any()
