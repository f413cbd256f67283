"""Psoas outlining details, on synthetic masks and images (1 mm grid)."""

from __future__ import annotations

import numpy as np

from workers.analysis.psoas import _fill_rimmed_fat_pockets, _rimmed_fat_pockets, find_psoas

SHAPE = (80, 80)


def disc(row: float, column: float, radius: float, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - row) ** 2 + (cc - column) ** 2 <= radius**2


def fill(clear: np.ndarray, rim: np.ndarray) -> np.ndarray:
    return _fill_rimmed_fat_pockets(clear, rim, _rimmed_fat_pockets(clear, np.ones(SHAPE, dtype=bool), rim))


def dice(found: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((found & truth).sum()) / float(found.sum() + truth.sum())


def test_a_fat_streak_behind_a_thin_rim_of_muscle_is_filled() -> None:
    """The rim between the streak and the outside is darker than half-way but not clearly muscle, so the streak
    opens as a cleft in the clear muscle; it is intramuscular fat all the same."""
    muscle = disc(40, 40, 15)
    streak = disc(48, 40, 4.5)
    rim = muscle & ~streak
    clear = rim & ~(disc(54, 40, 3) & ~streak)  # the thin rim below the streak is not clearly muscle
    filled = fill(clear, rim)
    assert filled[streak].all()
    assert not filled[~muscle].any()


def test_fat_enclosed_by_vessel_walls_is_not_filled() -> None:
    """Fat inside a ring of tissue darker than half-way that is not clear muscle (a vessel wall, bowel) stays
    out, even when clear muscle touches the ring on one side."""
    wall = disc(40, 40, 7) & ~disc(40, 40, 4)
    clear = disc(40, 58, 11)
    filled = fill(clear, clear | wall)
    assert not filled[disc(40, 40, 4)].any()


def test_a_fat_streak_from_the_vertebral_body_does_not_split_the_psoas() -> None:
    """A streak running in from the side against the body, to within a thin rim of the far surface, is closed
    by the body's edge rather than by muscle; the whole psoas is found, not the half on one side of it."""
    shape = (160, 200)
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    vertebra = ((rr - 80) / 18.0) ** 2 + ((cc - 100) / 22.0) ** 2 <= 1
    right_psoas, left_psoas = disc(80, 65, 13, shape), disc(80, 135, 13, shape)
    image = np.full(shape, 1.0)
    image[vertebra] = 0.6
    image[right_psoas | left_psoas] = 0.2
    image[(rr >= 77) & (rr <= 82) & (cc >= 56) & ~vertebra & right_psoas] = 1.0
    image += np.random.default_rng(0).normal(0.0, 0.03, shape)
    right, left = find_psoas(image, np.ones(shape, dtype=bool), vertebra)
    assert dice(right.mask, right_psoas) > 0.95
    assert dice(left.mask, left_psoas) > 0.95
