"""Synthetic lumbar MRI studies with known truth, for tests, benchmarks and `make demo`.

    from workers.phantom import PhantomOptions, generate_study
    truth = generate_study(7, Path("/tmp/study"), PhantomOptions(hard=True))

Modules: anatomy (the patient's parameters and the spine's curved frame), spine / soft_tissue / shapes (structures
as signed distances), structures (painting them), mri (relaxation, coil, noise), acquisition (one slice), stacks and
protocol (slice geometry, series, headers), dicom (files), truth (areas and the reference slice), study.
"""

from workers.phantom.protocol import PhantomOptions
from workers.phantom.study import generate_study
from workers.phantom.truth import REFERENCE_RULE, PhantomTruth, SliceTruth

__all__ = ["REFERENCE_RULE", "PhantomOptions", "PhantomTruth", "SliceTruth", "generate_study"]
