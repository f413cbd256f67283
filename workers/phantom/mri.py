"""MR physics of the phantom: tissue relaxation, the spin-echo signal, the receive-coil bias field, Rician noise.

Relaxation times are typical 1.5 T values (Stanisz 2005, Bottomley 1984), with the apparent T2 of fat in
turbo/fast spin echo (J-coupling breaks up, so fat stays bright on T2 TSE) rather than its spin-echo T2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.fft

Signals = Mapping[str, float]  # tissue name -> signal for one sequence (`tissue_signals`)

# tissue: (proton density relative to CSF, T1 ms, T2 ms)
TISSUES: dict[str, tuple[float, float, float]] = {
    "fat": (1.0, 260.0, 165.0),
    "muscle": (0.8, 870.0, 47.0),
    "csf": (1.0, 3500.0, 1500.0),
    "red_marrow": (0.9, 650.0, 60.0),
    "cortex": (0.05, 1000.0, 2.0),
    "nucleus": (0.9, 1100.0, 220.0),
    "annulus": (0.7, 900.0, 40.0),
    "flow_void": (0.03, 1200.0, 250.0),
    "blood_slow": (0.9, 1200.0, 250.0),
    "kidney": (0.9, 1000.0, 90.0),
    "liver": (0.75, 580.0, 45.0),
    "bowel_wall": (0.8, 900.0, 60.0),
    "bowel_fluid": (1.0, 3000.0, 800.0),
    "bowel_content": (0.7, 700.0, 120.0),
    "air": (0.0, 1000.0, 1.0),
    "edema": (0.95, 1200.0, 150.0),
    "cement": (0.02, 1000.0, 2.0),
    "nerve": (0.8, 1000.0, 80.0),
}


@dataclass(frozen=True)
class Sequence:
    """The contrast-defining parameters of one 2D (turbo) spin-echo series."""

    weighting: str  # "T2" | "T1"
    repetition_time_ms: float
    echo_time_ms: float
    echo_train_length: int


def spin_echo_signal(proton_density: float, t1: float, t2: float, sequence: Sequence) -> float:
    """S = PD (1 - exp(-TR/T1)) exp(-TE/T2): the spin-echo signal equation."""
    return (
        proton_density
        * (1.0 - np.exp(-sequence.repetition_time_ms / t1))
        * np.exp(-sequence.echo_time_ms / t2)
    )


def tissue_signals(sequence: Sequence, marrow_fat: float) -> dict[str, float]:
    """Signal of every tissue for this sequence; marrow mixes fat and red marrow by the patient's marrow fat."""
    signals = {name: float(spin_echo_signal(*values, sequence)) for name, values in TISSUES.items()}
    signals["marrow"] = marrow_fat * signals["fat"] + (1.0 - marrow_fat) * signals["red_marrow"]
    return signals


def coil_sensitivity(points_lps: np.ndarray, elements_lps: np.ndarray, reach_mm: float) -> np.ndarray:
    """Root-sum-of-squares sensitivity of a phased-array receive coil: high near the elements, falling with depth."""
    offsets = points_lps[:, None, :] - elements_lps[None, :, :]
    r2 = np.einsum("pek,pek->pe", offsets, offsets) / (reach_mm * reach_mm)
    return np.sqrt((1.0 / (1.0 + r2) ** 3).sum(axis=1))


@dataclass(frozen=True)
class BiasField:
    """The spine coil under the patient (and optionally an anterior body array), normalised at a reference point."""

    elements_lps: np.ndarray
    reach_mm: float
    reference_lps: np.ndarray
    strength: float  # 0: uniform (perfect prescan normalisation), 1: the raw coil profile

    def at(self, points_lps: np.ndarray) -> np.ndarray:
        raw = coil_sensitivity(points_lps, self.elements_lps, self.reach_mm)
        reference = coil_sensitivity(self.reference_lps[None, :], self.elements_lps, self.reach_mm)[0]
        return 1.0 + self.strength * (raw / reference - 1.0)


def limited_resolution(image: np.ndarray, phase_axis: int, phase_fraction: float) -> np.ndarray:
    """Keep only the central `phase_fraction` of k-space along the phase-encoding axis (reduced phase resolution,
    as most protocols acquire): blur and Gibbs ringing along that axis, as in the reconstructed images."""
    if phase_fraction >= 1.0:
        return image
    size = image.shape[phase_axis]
    spectrum = scipy.fft.rfft(image, axis=phase_axis)
    keep = int(round(phase_fraction * (size // 2 + 1)))
    index = [slice(None)] * image.ndim
    index[phase_axis] = slice(keep, None)
    spectrum[tuple(index)] = 0
    return scipy.fft.irfft(spectrum, n=size, axis=phase_axis).astype(np.float32)


def tissue_heterogeneity(image: np.ndarray, field: np.ndarray, amplitude: float) -> np.ndarray:
    """Slow signal variation within tissues (perfusion, microstructure) that no real image is free of."""
    return image * (1.0 + amplitude * field)


def rician(magnitude: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: Rician, with the noise floor in the background."""
    real = magnitude + np.float32(sigma) * rng.standard_normal(magnitude.shape, dtype=np.float32)
    imaginary = np.float32(sigma) * rng.standard_normal(magnitude.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def ghosts(image: np.ndarray, amplitude: float, phase_axis: int, rng: np.random.Generator) -> np.ndarray:
    """Motion ghosts: faint shifted copies of the image along the phase-encoding direction (breathing, pulsation)."""
    if amplitude <= 0:
        return image
    size = image.shape[phase_axis]
    shift = int(rng.integers(size // 5, size // 3))
    copy = np.roll(image, shift, axis=phase_axis) + np.roll(image, -shift, axis=phase_axis)
    return image + amplitude * 0.5 * copy
