"""Synthetic lumbar MRI studies with known truth, for tests, benchmarks and `make demo`.

    from workers.phantom import PhantomOptions, generate_study
    truth = generate_study(7, Path("/tmp/study"), PhantomOptions(hard=True))
"""

from workers.phantom.study import REFERENCE_RULE, PhantomOptions, PhantomTruth, SliceTruth, generate_study

__all__ = ["REFERENCE_RULE", "PhantomOptions", "PhantomTruth", "SliceTruth", "generate_study"]
