"""Find and label the lumbar vertebrae on a sagittal series and locate the upper endplate of L4.

Method, on a 1 mm grid resampled in each sagittal slab with rows running caudally and columns posteriorly:
1. Endplates are long, nearly straight edges: the craniocaudal intensity gradient integrated along lines 36 mm long,
   tilted up to 40 degrees (the lordosis tilts L5-S1 most), responds to them far more than to soft tissue.
2. The midline is the slab where those edges repeat most regularly; the response is averaged over the slabs within
   6 mm of it, where the 40-50 mm wide vertebral bodies look alike and bowel loops or facets do not. The same
   count is repeated on the slabs next to it and next to the slab about which the series is mirror-symmetric,
   weighted by confidence: a count with 1.5 times the midline's support replaces it, and the share of the votes
   the result gathered scales its confidence (the count changes with the slab more often than not).
3. The vertebral column is the band of columns whose edge profile repeats at a vertebral pitch (25-50 mm), measured
   by autocorrelation in 100 mm windows and followed by dynamic programming as the lordosis bends it. Below the
   clearest disc of the upper half it is redrawn by walking from disc to disc, each about one pitch along the
   last one's normal, which follows the lordosis into the sacrum. Along it the peaks of the edge response are the
   disc spaces.
4. Counting up from the sacrum: disc spaces need a vertebral body's height of image below them; the lowest may
   still be a sacral segment junction (S1-S2 in young adults), fainter or flatter than L5-S1, the most inclined
   disc of a supine patient, and a thin line in fused bone where L5-S1 is a full-height band between two bodies
   (its intensity stands out from the bone around it). The second disc above L5-S1 is L3-L4, and the L4 upper endplate is the caudal
   surface of that disc.
Transitional anatomy (six lumbar vertebrae, a sacralised L5) cannot be told apart without seeing the ribs, so the
count reported is what was seen from the sacrum upwards, capped at five, and the confidence says how clear the
counting was: the pipeline sends any level below its confidence threshold to review.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage, signal

from workers.analysis.geometry import (
    PATIENT_POSTERIOR,
    PATIENT_SUPERIOR,
    Plane,
    VolumeGeometry,
    unit,
)

GRID_MM = 1.0
EDGE_SIGMA_MM = 1.5
ENDPLATE_LENGTH_MM = 36.0
TILTS_DEGREES = (-40, -30, -20, -10, 0, 10, 20, 30, 40)
DISC_MERGE_SIGMA_MM = 4.0  # smoothing of the edge profile that merges a disc's two surfaces into one peak
MIN_PITCH_MM = 22.0  # closest two disc spaces can be: a short vertebral body plus a thin disc
MIDLINE_HALF_WIDTH_MM = 6.0  # slabs averaged either side of the midline: well inside the vertebral bodies
VOTE_AGREEMENT_MM = 12.0  # L4 endplates found on two slabs closer than half a vertebra agree
SYMMETRY_REACH_MM = 10.0  # slabs compared either side of a candidate midline
BODY_HALF_WIDTH_MM = 8.0  # half the depth of the band sampled along the column: the central part of the bodies


@dataclass(frozen=True)
class LevelFinding:
    """Where L4 starts, or why it could not be found."""

    upper_endplate_l4: Plane | None
    lumbar_vertebrae_counted: int | None
    confidence: float
    reason: str | None = None
    evidence: dict[str, float] = field(default_factory=dict)
    disc_centres_mm: tuple[tuple[float, float, float], ...] = ()  # caudal first: L5-S1, L4-L5, L3-L4, ...


@dataclass(frozen=True)
class SagittalGrid:
    """Resampling of every slab onto a 1 mm (caudal, posterior) grid, and the way back to patient mm."""

    origin: np.ndarray  # patient position of grid (0, 0) in slab 0
    caudal: np.ndarray  # unit vector of increasing grid row
    posterior: np.ndarray  # unit vector of increasing grid column
    slab_step: np.ndarray  # patient displacement from one slab to the next
    images: np.ndarray  # (slab, row, column) float32

    def to_patient(self, slab: float, row: float, column: float) -> np.ndarray:
        return self.origin + slab * self.slab_step + row * GRID_MM * self.caudal + column * GRID_MM * self.posterior


def resample_sagittal(volume: np.ndarray, geometry: VolumeGeometry) -> SagittalGrid:
    """Resample each slab so that rows run caudally and columns posteriorly at 1 mm, whatever the stored order."""
    first = geometry.first
    normal = first.normal
    caudal = unit(-PATIENT_SUPERIOR + np.dot(PATIENT_SUPERIOR, normal) * normal)
    posterior_in_plane = PATIENT_POSTERIOR - np.dot(PATIENT_POSTERIOR, normal) * normal
    posterior = unit(posterior_in_plane - np.dot(posterior_in_plane, caudal) * caudal)
    corners = [
        first.index_to_patient(r, c) for r in (0, first.rows - 1) for c in (0, first.columns - 1)
    ]
    along_caudal = [float(np.dot(p - first.position, caudal)) for p in corners]
    along_posterior = [float(np.dot(p - first.position, posterior)) for p in corners]
    origin = first.position + min(along_caudal) * caudal + min(along_posterior) * posterior
    n_rows = int(np.floor((max(along_caudal) - min(along_caudal)) / GRID_MM)) + 1
    n_columns = int(np.floor((max(along_posterior) - min(along_posterior)) / GRID_MM)) + 1
    grid_rows, grid_columns = np.mgrid[0:n_rows, 0:n_columns].astype(float)
    points = (
        origin[None, None, :]
        + grid_rows[..., None] * GRID_MM * caudal
        + grid_columns[..., None] * GRID_MM * posterior
        - first.position
    )
    source_rows = points @ first.column_direction / first.pixel_spacing[0]
    source_columns = points @ first.row_direction / first.pixel_spacing[1]
    images = np.stack(
        [
            ndimage.map_coordinates(slab, [source_rows, source_columns], order=1, mode="constant", cval=0.0)
            for slab in volume.astype(np.float32)
        ]
    )
    return SagittalGrid(origin, caudal, posterior, geometry.slice_step, images)


def _line_kernel(length_mm: float, tilt_degrees: float) -> np.ndarray:
    """A normalised line of the given length, tilted from the grid rows (positive: anterior end higher)."""
    half = int(np.ceil(length_mm / 2 / GRID_MM))
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    angle = np.radians(tilt_degrees)
    for t in np.linspace(-length_mm / 2, length_mm / 2, int(length_mm * 2) + 1):
        kernel[round(half + t * np.sin(angle) / GRID_MM), round(half + t * np.cos(angle) / GRID_MM)] = 1
    return kernel / kernel.sum()


@lru_cache(maxsize=8)
def _line_kernel_spectra(shape: tuple[int, int]) -> tuple[tuple[int, int], np.ndarray]:
    """Spectra of the tilted line kernels for images of one shape (every slab of a series shares it)."""
    size = int(np.ceil(ENDPLATE_LENGTH_MM / 2 / GRID_MM)) * 2 + 1
    padded = (sp_fft.next_fast_len(shape[0] + size - 1), sp_fft.next_fast_len(shape[1] + size - 1))
    spectra = np.stack(
        [sp_fft.rfft2(_line_kernel(ENDPLATE_LENGTH_MM, tilt), s=padded) for tilt in TILTS_DEGREES]
    )
    return padded, spectra


def tilted_edge_responses(image: np.ndarray) -> np.ndarray:
    """Strength of long edges at each tilt of TILTS_DEGREES: (tilt, row, column), image scaled to its 99th centile.

    One forward transform of the gradient serves every tilt (the kernels' spectra are cached per image shape)."""
    scale = float(np.percentile(image, 99)) or 1.0
    gradient = np.abs(ndimage.gaussian_filter(image / scale, EDGE_SIGMA_MM / GRID_MM, order=(1, 0)))
    padded, spectra = _line_kernel_spectra(gradient.shape)
    responses = sp_fft.irfft2(sp_fft.rfft2(gradient, s=padded)[None] * spectra, s=padded, axes=(1, 2))
    half = int(np.ceil(ENDPLATE_LENGTH_MM / 2 / GRID_MM))
    return responses[:, half : half + gradient.shape[0], half : half + gradient.shape[1]].astype(np.float32)


def endplate_response(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The strongest of the tilted responses at each grid point, and the tilt (degrees) that gave it."""
    return responses.max(axis=0), np.asarray(TILTS_DEGREES, dtype=float)[np.argmax(responses, axis=0)]


PERIOD_WINDOW_MM = 100.0
PERIOD_STEP_MM = 10.0
PITCH_RANGE_MM = (25.0, 50.0)


def _periodicity(response: np.ndarray) -> np.ndarray:
    """For row windows of 100 mm, how strongly each column band's edge profile repeats at a vertebral pitch.

    Returns (window, column) peak autocorrelations (-1..1) at lags of one pitch: endplates repeat every vertebra
    whatever the shape of the profile between them; posterior elements repeat too but less cleanly, soft tissue not.
    """
    band = ndimage.uniform_filter1d(response, int(2 * BODY_HALF_WIDTH_MM / GRID_MM), axis=1)
    window = int(PERIOD_WINDOW_MM / GRID_MM)
    lags = np.arange(int(PITCH_RANGE_MM[0] / GRID_MM), int(PITCH_RANGE_MM[1] / GRID_MM) + 1)
    starts = range(0, max(1, band.shape[0] - window + 1), int(PERIOD_STEP_MM / GRID_MM))
    n_fft = 2 * window
    shares = []
    for start in starts:
        segment = band[start : start + window]
        if segment.shape[0] < window:
            segment = np.pad(segment, ((0, window - segment.shape[0]), (0, 0)), mode="edge")
        centred = segment - segment.mean(axis=0)
        spectrum = sp_fft.rfft(centred, n=n_fft, axis=0)
        autocorrelation = sp_fft.irfft(np.abs(spectrum) ** 2, n=n_fft, axis=0)[: window]
        # Unbiased: each lag averages over the overlap it has, so a 39 mm pitch is not penalised against 25 mm.
        autocorrelation = autocorrelation / (window - np.arange(window))[:, None]
        autocorrelation = autocorrelation / (autocorrelation[0] + 1e-12)
        shares.append(autocorrelation[lags].max(axis=0))
    return np.asarray(shares)


def _column_path(shares: np.ndarray, n_rows: int) -> np.ndarray:
    """The vertebral column's centre (grid column) at every row: a smooth path through the most periodic band.

    Dynamic programming over the row windows lets the path follow the lordosis (at most 8 mm per 10 mm window).
    """
    n_windows, n_columns = shares.shape
    max_shift = int(8 / GRID_MM)
    score = shares[0].copy()
    back = np.zeros((n_windows, n_columns), dtype=int)
    for w in range(1, n_windows):
        reachable = np.lib.stride_tricks.sliding_window_view(
            np.pad(score, max_shift, constant_values=-np.inf), 2 * max_shift + 1
        )
        back[w] = np.arange(n_columns) - max_shift + np.argmax(reachable, axis=1)
        score = reachable.max(axis=1) + shares[w]
    path = np.empty(n_windows, dtype=int)
    path[-1] = int(np.argmax(score))
    for w in range(n_windows - 1, 0, -1):
        path[w - 1] = back[w, path[w]]
    centres = np.arange(n_windows) * PERIOD_STEP_MM / GRID_MM + PERIOD_WINDOW_MM / GRID_MM / 2
    return np.interp(np.arange(n_rows), centres, path.astype(float))


def _band_profile(image: np.ndarray, path: np.ndarray, half_width_mm: float = BODY_HALF_WIDTH_MM) -> np.ndarray:
    """Mean of an image over a band of columns around the path at every row."""
    half = int(half_width_mm / GRID_MM)
    last = image.shape[1] - 1
    first_inside = np.clip(np.ceil(path - half), 0, last).astype(int)
    last_inside = np.clip(np.floor(path + half), 0, last).astype(int)
    sums = np.concatenate([np.zeros((image.shape[0], 1)), np.cumsum(image, axis=1, dtype=float)], axis=1)
    rows = np.arange(image.shape[0])
    return (sums[rows, last_inside + 1] - sums[rows, first_inside]) / (last_inside - first_inside + 1)


def _disc_rows(profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the disc spaces along the column and their prominence (relative to the strongest)."""
    # Merging the two surfaces of a disc (8-14 mm apart) into one peak finds discs on T1 (a dark band between
    # bright marrow) as on T2; the peak may then sit on either surface, which _caudal_endplate_row allows for.
    smooth = ndimage.gaussian_filter1d(profile, DISC_MERGE_SIGMA_MM / GRID_MM)
    baseline = ndimage.minimum_filter1d(smooth, int(PITCH_RANGE_MM[1] / GRID_MM))
    lifted = smooth - ndimage.gaussian_filter1d(baseline, 10.0 / GRID_MM)
    peaks, properties = signal.find_peaks(lifted, distance=int(MIN_PITCH_MM / GRID_MM), prominence=0)
    if len(peaks) == 0:
        return peaks, np.array([])
    prominence = properties["prominences"] / max(properties["prominences"].max(), 1e-12)
    return peaks, prominence


EDGE_MARGIN_MM = 6.0  # disc candidates closer than this to the top of the field are cut and unreliable
MIN_DISC_PROMINENCE = 0.06
CAUDAL_SURFACE_REACH_MM = 13.0  # the merged edge peak may sit on a disc's cranial surface, a disc height above
DARK_LINE_MM = 4.0  # how far from the strongest edge below a disc the endplate's dark line may lie, and its width
DARK_LINE_BAND_MM = 4.0  # half-width of the band the line is looked for in: narrow, so a tilted line stays thin
DARK_LINE_DEPTH = 0.15  # a dark line is a dip at least this share of the intensity range around the edge
BODY_BELOW_MM = 16.0  # image needed below a disc space to see the vertebral body that makes it one
SACRAL_JUNCTION_PROMINENCE = 0.5  # a lowest candidate fainter than this share of the median is a sacral junction
SET_ASIDE_CONFIDENCE = 0.8  # what setting a faint lowest candidate aside costs the count's confidence
DISC_CONTRAST_WEIGHT = 30.0  # degrees of inclination worth a disc band as distinct as the image's whole range
FAINT_JUNCTION_CONTRAST = 0.5  # a lowest candidate with less than this share of the median band contrast is sacral
INCLINATION_PER_PROMINENCE = 10.0  # degrees of inclination worth the full prominence of a disc, when telling L5-S1


def _mirror_symmetry(images: np.ndarray, spacing_mm: float) -> np.ndarray:
    """For each slab, how alike the slabs at equal distances either side of it are (mean correlation of the pairs
    within SYMMETRY_REACH_MM); -inf where the series does not reach that far on both sides.

    The body is close to mirror-symmetric about the midsagittal plane, while the periodic vertebral pattern is
    nearly the same in every slab within the 40-50 mm width of the bodies and so cannot tell the midline."""
    pairs = max(1, round(SYMMETRY_REACH_MM / spacing_mm))
    smooth = np.stack([ndimage.gaussian_filter(image, EDGE_SIGMA_MM / GRID_MM) for image in images])
    normalised = (smooth - smooth.mean(axis=(1, 2), keepdims=True)) / (smooth.std(axis=(1, 2), keepdims=True) + 1e-6)
    scores = np.full(len(images), -np.inf)
    for centre in range(pairs, len(images) - pairs):
        scores[centre] = np.mean(
            [np.mean(normalised[centre - j] * normalised[centre + j]) for j in range(1, pairs + 1)]
        )
    return scores


def _midline_candidates(grid: SagittalGrid, responses: list[np.ndarray | None]) -> tuple[int, list[int]]:
    """The midline slab (where the vertebral pitch stands out most) and the other slabs that may be the midline:
    its neighbours and those of the slab about which the series is most mirror-symmetric.

    Neither cue is sure: the vertebral pattern is nearly the same in every slab within the 40-50 mm width of the
    bodies, and a scoliotic or rotated spine is not symmetric about one slab."""
    present = np.array([r is not None for r in responses])
    periodic = [
        float(_periodicity(endplate_response(r)[0]).max(axis=1).mean()) if r is not None else -np.inf
        for r in responses
    ]
    symmetry = _mirror_symmetry(grid.images, float(np.linalg.norm(grid.slab_step)) or 1.0)
    symmetry[~present] = -np.inf
    midline = int(np.argmax(periodic))
    centres = [midline, int(np.argmax(symmetry))] if np.isfinite(symmetry).any() else [midline]
    around = {c + step for c in centres for step in (-1, 0, 1)} - {midline}
    return midline, sorted(c for c in around if 0 <= c < len(responses) and present[c])


def _around(grid: SagittalGrid, responses: list[np.ndarray | None], slab: int) -> tuple[np.ndarray, np.ndarray]:
    """The tilted edge responses and the image averaged over the slabs within MIDLINE_HALF_WIDTH_MM of a slab.

    Vertebral bodies are 40-50 mm wide, so their endplates are in every one of those slabs at the same place;
    bowel loops and posterior elements change from slab to slab and average out."""
    reach = int(MIDLINE_HALF_WIDTH_MM // (float(np.linalg.norm(grid.slab_step)) or 1.0))
    near = [i for i in range(max(0, slab - reach), min(len(responses), slab + reach + 1)) if responses[i] is not None]
    return np.mean([responses[i] for i in near], axis=0), grid.images[near].mean(axis=0)


def _caudal_endplate_row(response: np.ndarray, image: np.ndarray, path: np.ndarray, disc_row: int) -> float:
    """Row (fractional) of the caudal surface of a disc: the last strong edge within CAUDAL_SURFACE_REACH_MM below
    the disc's peak, or the dark line of the endplate's cortex beside it.

    A dark line may part the disc from the marrow (on T2 the disc is bright): the edge into it and the edge out of
    it then merge into one broad peak of edge strength, whose crest lay on either side of the line from one study
    to the next, 2 mm apart. The line itself, the darkest row, is where the bone of the endplate is."""
    profile = _band_profile(response, path)
    window = profile[disc_row : disc_row + int(CAUDAL_SURFACE_REACH_MM / GRID_MM) + 1]
    peaks, _ = signal.find_peaks(np.concatenate([[0.0], window, [0.0]]))
    peaks = peaks - 1
    strong = [p for p in peaks if window[p] >= 0.5 * window.max()]
    edge = disc_row + (max(strong) if strong else int(np.argmax(window)))
    intensity = ndimage.gaussian_filter1d(_band_profile(image, path, DARK_LINE_BAND_MM), 1.0 / GRID_MM)
    dark = int(DARK_LINE_MM / GRID_MM)
    lines, properties = signal.find_peaks(-intensity, prominence=0, wlen=4 * dark + 1, width=(None, dark))
    near = np.abs(lines - edge) <= dark
    if near.any():
        depth, line = max(zip(properties["prominences"][near], lines[near]))
        low, high = max(edge - 2 * dark, 0), edge + 2 * dark + 1
        if depth >= DARK_LINE_DEPTH * np.ptp(intensity[low:high]):
            return _vertex(-intensity, int(line))
    return _vertex(profile, edge)


def _vertex(values: np.ndarray, at: int) -> float:
    """Position of the vertex of the parabola through a peak and its two neighbours: a peak between rows."""
    if not 0 < at < len(values) - 1:
        return float(at)
    before, centre, after = values[at - 1 : at + 2]
    curvature = before - 2 * centre + after
    return at + (float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0)


def _disc_tilt(image: np.ndarray, path: np.ndarray, row: int) -> float:
    """Tilt (degrees, positive: anterior end higher) of the edges at a disc, from the structure tensor of the
    nearly horizontal edges (within 50 degrees) around the column: robust to the canal's and the walls' edges."""
    half_rows, half_columns = int(6 / GRID_MM), int(12 / GRID_MM)
    centre = round(path[row])
    rows = slice(max(0, row - half_rows), row + half_rows + 1)
    columns = slice(max(0, centre - half_columns), centre + half_columns + 1)
    sigma = EDGE_SIGMA_MM / GRID_MM
    along_rows = ndimage.gaussian_filter(image, sigma, order=(1, 0))[rows, columns]
    along_columns = ndimage.gaussian_filter(image, sigma, order=(0, 1))[rows, columns]
    horizontal = np.abs(along_columns) < np.tan(np.radians(50)) * np.abs(along_rows)
    rr = float(np.sum(along_rows[horizontal] ** 2))
    cc = float(np.sum(along_columns[horizontal] ** 2))
    rc = float(np.sum(along_rows[horizontal] * along_columns[horizontal]))
    gradient_angle = 0.5 * np.arctan2(2 * rc, rr - cc)  # from the row axis towards the column axis
    return float(-np.degrees(gradient_angle))


def _inclination(tilted: np.ndarray, path: np.ndarray, row: int) -> float:
    """How inclined the disc at a row is (degrees, unsigned): the median of the per-pixel best tilts around the
    column plus half the best tilt of the mean response there. Two coarse estimates (10-degree steps) that fail in
    different ways (crossing edges, the canal) are steadier together than either alone."""
    half = int(BODY_HALF_WIDTH_MM / GRID_MM)
    centre = round(path[row])
    box = tilted[:, max(0, row - 3) : row + 4, max(0, centre - half) : centre + half + 1]
    per_pixel = np.asarray(TILTS_DEGREES, dtype=float)[np.argmax(box, axis=0)]
    of_mean = TILTS_DEGREES[int(np.argmax(box.reshape(len(TILTS_DEGREES), -1).mean(axis=1)))]
    return float(abs(np.median(per_pixel)) + 0.5 * abs(of_mean))


def _disc_band_contrast(image: np.ndarray, path: np.ndarray, rows: list[int]) -> list[float]:
    """How distinct each candidate's disc band is from the bone around it: the largest departure of the intensity
    along the column (within the disc's reach of the peak) from the median over the vertebrae either side, as a
    share of the image's intensity range along the column.

    L5-S1 is a full-height disc between two vertebral bodies; below it the sacral segments are fused, so an S1-S2
    junction is a thin, faint line in continuous bone, whatever the weighting (dark or bright discs)."""
    along = ndimage.gaussian_filter1d(_band_profile(image, path, half_width_mm=6.0), EDGE_SIGMA_MM / GRID_MM)
    scale = float(np.percentile(along, 95) - np.percentile(along, 5)) or 1.0
    n_rows = len(along)
    contrasts = []
    for row in rows:
        around = along[max(0, row - int(35 / GRID_MM)) : min(n_rows, row + int(40 / GRID_MM))]
        band = along[max(0, row - int(6 / GRID_MM)) : min(n_rows, row + int(CAUDAL_SURFACE_REACH_MM / GRID_MM) + 1)]
        contrasts.append(float(np.max(np.abs(band - np.median(around)))) / scale)
    return contrasts


WALK_PITCH_MM = (20.0, 54.0)  # how far the next disc may be from the last along the column
WALK_PITCH_CHANGE = (0.75, 1.3)  # next pitch / last pitch: neighbouring vertebrae are about the same height
WALK_LATERAL_MM = 6.0  # how far off the line through the last disc's centre the next may lie
WALK_TILT_CHANGE_DEGREES = 15.0  # how much more or less inclined the next disc may be
WALK_MIN_STRENGTH = 0.3  # a next "disc" weaker than this share of the discs followed so far ends the walk
WALK_MAX_STEPS = 12
OVERRULE_SUPPORT = 1.5  # how much more support another slab's count needs than the midline's to replace it
PATHS_DISAGREE_CONFIDENCE = 0.5  # what a count that the walk and the periodic band disagree on keeps of its confidence


def _tilt_at(merged: np.ndarray, row: float, column: float, tilt: float) -> float:
    """The tilt (within WALK_TILT_CHANGE_DEGREES of the given one) of the strongest merged response near a point."""
    allowed = np.abs(np.asarray(TILTS_DEGREES, dtype=float) - tilt) <= WALK_TILT_CHANGE_DEGREES
    r, c = round(row), round(column)
    box = merged[:, max(0, r - 4) : r + 5, max(0, c - 4) : c + 5].reshape(len(TILTS_DEGREES), -1)
    if box.size == 0:
        return tilt
    return float(TILTS_DEGREES[int(np.argmax(np.where(allowed, box.max(axis=1), -np.inf)))])


def _walk_caudally(merged: np.ndarray, row: float, column: float, tilt: float) -> list[tuple[float, float, float]]:
    """Disc centres (row, column, tilt) found by stepping from one disc to the next down the column.

    Each disc's plane tells where the column goes: the next disc lies about one vertebral pitch away along its
    normal. This follows the lordosis into the sacrum, where the column turns posteriorly and a path drawn through
    the most periodic band runs on into the bowel."""
    _, n_rows, n_columns = merged.shape
    found: list[tuple[float, float, float]] = []
    strengths: list[float] = []
    pitches = np.arange(WALK_PITCH_MM[0], WALK_PITCH_MM[1] + 1, GRID_MM)
    laterals = np.arange(-WALK_LATERAL_MM, WALK_LATERAL_MM + 1, 2.0)
    last_pitch: float | None = None
    for _ in range(WALK_MAX_STEPS):
        theta = np.radians(tilt)
        normal = np.array([np.cos(theta), -np.sin(theta)])  # caudal, perpendicular to the disc
        along = np.array([np.sin(theta), np.cos(theta)])  # along the disc, posteriorly
        allowed = np.abs(np.asarray(TILTS_DEGREES, dtype=float) - tilt) <= WALK_TILT_CHANGE_DEGREES
        rows = row + pitches[:, None] * normal[0] + laterals[None, :] * along[0]
        columns = column + pitches[:, None] * normal[1] + laterals[None, :] * along[1]
        values = ndimage.map_coordinates(merged[allowed].max(axis=0), [rows, columns], order=1, cval=0.0)
        profile = values.max(axis=1)
        if last_pitch is not None:
            plausible = (pitches >= WALK_PITCH_CHANGE[0] * last_pitch) & (pitches <= WALK_PITCH_CHANGE[1] * last_pitch)
            profile = np.where(plausible, profile, 0.0)
        peaks, _ = signal.find_peaks(np.concatenate([[0.0], profile, [0.0]]))
        if len(peaks) == 0:
            break
        best = int(peaks[np.argmax(profile[peaks - 1])] - 1)
        if strengths and profile[best] < WALK_MIN_STRENGTH * float(np.median(strengths)):
            break
        lateral = laterals[int(np.argmax(values[best]))]
        row, column = np.array([row, column]) + pitches[best] * normal + lateral * along
        if not (0 <= row < n_rows and 0 <= column < n_columns):
            break
        tilt = _tilt_at(merged, row, column, tilt)
        found.append((float(row), float(column), tilt))
        strengths.append(float(profile[best]))
        last_pitch = float(pitches[best])
    return found


def _follow_column(tilted: np.ndarray, path: np.ndarray) -> np.ndarray:
    """The column's centre at every row: the periodic path down to the clearest disc in the upper half of the
    field, then through the disc centres found by walking down from it, and beyond the last in its direction."""
    merged = ndimage.gaussian_filter1d(tilted, DISC_MERGE_SIGMA_MM / GRID_MM, axis=1)
    profile = _band_profile(merged.max(axis=0), path, half_width_mm=2.0)
    n_rows = len(path)
    margin = int(BODY_BELOW_MM / GRID_MM)
    if n_rows <= 2 * margin:
        return path
    # The anchor is in the upper half of the field, where the column runs nearly straight and the periodic path
    # is sure to be on it; the pelvis below has edges enough to outshine any disc.
    anchor_row = margin + int(np.argmax(profile[margin : n_rows // 2]))
    anchor_column = float(path[anchor_row])
    anchor_tilt = _tilt_at(merged, anchor_row, anchor_column, 0.0)
    chain = [(float(anchor_row), anchor_column, anchor_tilt)]
    chain += _walk_caudally(merged, *chain[0])
    if len(chain) < 2:
        return path
    rows = np.array([disc[0] for disc in chain])
    columns = np.array([disc[1] for disc in chain])
    every = np.arange(n_rows, dtype=float)
    followed = path.astype(float).copy()
    between = (every >= rows[0]) & (every <= rows[-1])
    followed[between] = np.interp(every[between], rows, columns)
    below = every > rows[-1]
    followed[below] = columns[-1] - np.tan(np.radians(chain[-1][2])) * (every[below] - rows[-1])
    return np.clip(followed, 0, tilted.shape[2] - 1)


def find_l4_upper_endplate(volume: np.ndarray, geometry: VolumeGeometry) -> LevelFinding:
    """Label the lumbar discs from the sacrum upwards and return the L4 upper endplate as a plane in patient mm."""
    grid = resample_sagittal(volume, geometry)
    if not np.any(grid.images):
        return LevelFinding(None, None, 0.0, "l4_not_found", {"discs_found": 0.0})
    responses = [tilted_edge_responses(image) if np.any(image) else None for image in grid.images]
    midline, others = _midline_candidates(grid, responses)
    around_midline = _around(grid, responses, midline)
    finding = _count_in_slab(grid, midline, *around_midline)
    if finding.upper_endplate_l4 is None:
        return finding
    # A count that changes with the slab it is read on is doubtful: the other slabs that may be the midline vote,
    # each with its confidence. The midline's count stands unless another gathers OVERRULE_SUPPORT times its
    # support (on real scans a young patient's S1-S2 junction can win a narrow vote of the slabs nearest the
    # midline); the share of the votes the count gathered scales its confidence.
    pool = [finding] + [
        vote
        for vote in (_count_in_slab(grid, slab, *_around(grid, responses, slab)) for slab in others)
        if vote.upper_endplate_l4 is not None
    ]
    support = [sum(other.confidence for other in pool if _same_level(grid, one, other)) for one in pool]
    best = int(np.argmax(support))
    if support[best] <= OVERRULE_SUPPORT * support[0]:
        best = 0
    chosen = pool[best]
    total = sum(one.confidence for one in pool)
    agreement = support[best] / total if total > 0 else 0.0
    # The column drawn through the periodic band alone, without the walk, gives a second count on the midline:
    # where it disagrees the walk may have left the column (or the band run into the pelvis).
    unwalked = _count_in_slab(grid, midline, *around_midline, walk=False)
    path_agreement = 1.0 if _same_level(grid, chosen, unwalked) else PATHS_DISAGREE_CONFIDENCE
    return replace(
        chosen,
        confidence=round(chosen.confidence * agreement * path_agreement, 3),
        evidence={
            **chosen.evidence,
            "midline_agreement": round(agreement, 3),
            "path_agreement": path_agreement,
            "overruled_midline": float(best != 0),
        },
    )


def _same_level(grid: SagittalGrid, one: LevelFinding, other: LevelFinding) -> bool:
    """Whether two findings put the L4 upper endplate within half a vertebra of each other."""
    if one.upper_endplate_l4 is None or other.upper_endplate_l4 is None:
        return False
    offset = one.upper_endplate_l4.point - other.upper_endplate_l4.point
    return abs(float(np.dot(offset, grid.caudal))) <= VOTE_AGREEMENT_MM


def _count_in_slab(
    grid: SagittalGrid, slab: int, tilted: np.ndarray, midline_image: np.ndarray, *, walk: bool = True
) -> LevelFinding:
    """Count the discs up from the sacrum on the slabs around one midline candidate (along the column walked from
    disc to disc, or along the periodic band alone)."""
    response, _ = endplate_response(tilted)
    n_rows = response.shape[0]
    # Smoothed across columns so that the path runs through the middle of the periodic band (the bodies), not
    # along its anterior or posterior edge.
    path = _column_path(ndimage.gaussian_filter1d(_periodicity(response), 8.0 / GRID_MM, axis=1), n_rows)
    if walk:
        path = _follow_column(tilted, path)
    # The response already integrates 36 mm along each edge's own tilt: sampling the path alone keeps tilted discs
    # (L5-S1) sharp, where averaging a band of columns at one row would smear them.
    peaks, prominence = _disc_rows(_band_profile(response, path, half_width_mm=2.0))
    # A disc space is recognisable only with a vertebral body below it: the lowest candidates, closer to the
    # bottom of the field than that, are the sacrum's lower surfaces or the pelvis where the column leaves the bone.
    keep = (
        (prominence >= MIN_DISC_PROMINENCE)
        & (peaks >= EDGE_MARGIN_MM / GRID_MM)
        & (peaks <= n_rows - 1 - BODY_BELOW_MM / GRID_MM)
    )
    candidates = [int(row) for row in peaks[keep]]
    strengths = list(prominence[keep])
    # Below L5-S1 the sacrum may still show a segment junction (S1-S2 in young adults): usually fainter than the
    # discs above, or flatter than L5-S1, the most inclined disc of a supine patient (the sacral slope). A faint
    # lowest candidate is set aside; of the two lowest left, L5-S1 is the more inclined and distinct one.
    contrasts = _disc_band_contrast(midline_image, path, candidates)
    end = len(candidates)
    set_aside = end >= 4 and (
        strengths[-1] < SACRAL_JUNCTION_PROMINENCE * float(np.median(strengths[:-1]))
        or contrasts[-1] < FAINT_JUNCTION_CONTRAST * float(np.median(contrasts[:-1]))
    )
    if set_aside:
        end -= 1  # a faint L5-S1 (seen on real scans) would be lost here, so the confidence pays for it below
    scores = {
        i: _inclination(tilted, path, candidates[i])
        + INCLINATION_PER_PROMINENCE * strengths[i]
        + DISC_CONTRAST_WEIGHT * contrasts[i]
        for i in range(max(0, end - 2), end)
    }
    ranked = sorted(scores, key=lambda i: (scores[i], i), reverse=True)
    l5_s1_index = ranked[0] if ranked else -1
    # How clearly L5-S1 stood out from the other low candidate, in units of one 10-degree tilt step.
    distinctness = min(1.0, (scores[ranked[0]] - scores[ranked[1]]) / 10.0) if len(ranked) > 1 else 1.0
    discs = candidates[: l5_s1_index + 1]
    prominence = strengths[: l5_s1_index + 1]
    evidence: dict[str, float] = {
        "slab": float(slab),
        "discs_found": float(len(discs)),
        "candidates_below_l5_s1": float(len(candidates) - len(discs)),
    }
    if len(discs) < 3:
        return LevelFinding(None, None, 0.0, "l4_not_found", evidence)

    l5_s1, l4_l5, l3_l4 = discs[-1], discs[-2], discs[-3]
    pitches = np.diff(discs[-4:] if len(discs) >= 4 else discs[-3:])
    # Peaks sit on either surface of a disc, so a pitch measured between them is uncertain by about 5 mm.
    regular = bool(np.all((pitches >= PITCH_RANGE_MM[0] - 5) & (pitches <= PITCH_RANGE_MM[1] + 5)))
    endplate_row = _caudal_endplate_row(response, midline_image, path, l3_l4)
    endplate_tilt = np.radians(_disc_tilt(midline_image, path, round(endplate_row)))
    point = grid.to_patient(slab, endplate_row, path[round(endplate_row)])
    cranial = -grid.caudal
    normal = unit(np.cos(endplate_tilt) * cranial + np.sin(endplate_tilt) * grid.posterior)

    # The weakest of the three lowest disc spaces: one faint disc is enough to make the count doubtful.
    clarity = float(np.min(prominence[-3:]))
    confidence = clarity * (1.0 if regular else 0.5) * distinctness * (SET_ASIDE_CONFIDENCE if set_aside else 1.0)
    evidence.update(
        {
            "pitch_min_mm": float(pitches.min()),
            "pitch_max_mm": float(pitches.max()),
            "disc_clarity": round(clarity, 3),
            "l5_s1_distinctness": round(distinctness, 3),
            "endplate_tilt_degrees": round(float(np.degrees(endplate_tilt)), 1),
        }
    )
    disc_points = tuple(
        tuple(float(v) for v in grid.to_patient(slab, row, path[row])) for row in (l5_s1, l4_l5, l3_l4)
    )
    return LevelFinding(
        upper_endplate_l4=Plane(point=point, normal=normal),
        lumbar_vertebrae_counted=min(5, len(discs)),
        confidence=round(float(np.clip(confidence, 0.0, 1.0)), 3),
        reason=None,
        evidence=evidence,
        disc_centres_mm=disc_points,  # type: ignore[arg-type]
    )
