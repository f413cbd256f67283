"""Turning image measurements into 0..1 evidence terms for the segmentation's confidence."""

from __future__ import annotations

import numpy as np


def ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at ``zero_at``, 1 at ``one_at``, linear between and clipped outside (either direction)."""
    return float(np.clip((value - zero_at) / (one_at - zero_at), 0.0, 1.0))


def band(value: float, zero_below: float, one_from: float, one_to: float, zero_above: float) -> float:
    """1 inside [one_from, one_to], falling linearly to 0 at ``zero_below`` and ``zero_above``."""
    return min(ramp(value, zero_below, one_from), ramp(value, zero_above, one_to))
