"""The cohort export for researchers: pseudonymised measurements (CSV, Parquet), a data dictionary, a summary with
the paper's outcome comparison, and plots. Nothing in it names or identifies a patient.

Modules: pseudonym (pure), cohort (collect), statistics, plots, run (run_export, nightly_export), schedule (the
Celery beat entry), command (`plvi export`). Nothing is imported here, so the Celery app can register the nightly
task without loading pandas and matplotlib into every process."""
