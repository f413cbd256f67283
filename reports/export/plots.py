"""PNG plots of the cohort: the PLVI histogram with the cut-off, and PLVI against age."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt
import pandas as pd

SEX_COLOURS = {"F": "tab:red", "M": "tab:blue", "O": "tab:green", "U": "tab:gray"}


def plot_histogram(cohort: pd.DataFrame, cutoffs: list[float], path: Path) -> None:
    measured = cohort["plvi"].dropna().astype(float)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.hist(measured, bins=min(30, max(5, measured.size // 3)), color="tab:blue", alpha=0.8)
    for cutoff in cutoffs:
        axes.axvline(cutoff, color="tab:red", linestyle="--", label=f"cut-off {cutoff:g}")
    axes.set_xlabel("PLVI")
    axes.set_ylabel("studies")
    axes.set_title(f"PLVI, n={measured.size}")
    if cutoffs:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def plot_plvi_against_age(cohort: pd.DataFrame, cutoffs: list[float], path: Path) -> None:
    measured = cohort[cohort["plvi"].notna() & cohort["age_years"].notna()]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for sex, group in measured.groupby("sex"):
        axes.scatter(
            group["age_years"].astype(float), group["plvi"].astype(float), s=14,
            color=SEX_COLOURS.get(str(sex), "black"), label=str(sex),
        )
    for cutoff in cutoffs:
        axes.axhline(cutoff, color="tab:red", linestyle="--")
    axes.set_xlabel("age (years)")
    axes.set_ylabel("PLVI")
    axes.set_title(f"PLVI against age, n={len(measured)}")
    if len(measured):
        axes.legend(title="sex")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
