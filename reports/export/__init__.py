"""The cohort export for researchers: pseudonymised measurements (CSV, Parquet), a data dictionary, a summary with
the paper's outcome comparison, and plots. Nothing in it names or identifies a patient."""

from reports.export.pseudonym import pseudonym
from reports.export.run import ExportResult, nightly_export, run_export

__all__ = ["ExportResult", "nightly_export", "pseudonym", "run_export"]
