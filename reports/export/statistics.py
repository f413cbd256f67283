"""The summary a researcher reads first, and the paper's outcome comparison (Sun et al., Sci Rep: patients split at
the median PLVI; Fisher's exact test for categorical outcomes, Wilcoxon rank-sum for continuous ones)."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from reports.export.pseudonym import AGE_BANDS


def _describe(plvi: pd.Series) -> dict[str, object]:
    values = plvi.dropna().astype(float)
    if values.empty:
        return {"n": 0, "median": None, "q1": None, "q3": None}
    return {
        "n": int(values.size),
        "median": round(float(values.median()), 4),
        "q1": round(float(values.quantile(0.25)), 4),
        "q3": round(float(values.quantile(0.75)), 4),
    }


def summarise(cohort: pd.DataFrame) -> dict[str, object]:
    """N, status counts, PLVI median and IQR overall, by sex and by age band, and the share flagged."""
    measured = cohort[cohort["plvi"].notna()]
    flagged = measured["low_psoas_mass"].fillna(False).astype(bool)
    cutoffs = sorted({float(c) for c in cohort["cutoff"].dropna()})
    return {
        "n_studies": len(cohort),
        "n_patients": int(cohort["pseudonym"].nunique()),
        "status_counts": {str(k): int(v) for k, v in cohort["status"].value_counts().sort_index().items()},
        "n_measured": len(measured),
        "cutoffs": cutoffs,
        "share_flagged": round(float(flagged.mean()), 4) if len(measured) else None,
        "n_flagged": int(flagged.sum()),
        "plvi": _describe(measured["plvi"]),
        "plvi_by_sex": {str(sex): _describe(group["plvi"]) for sex, group in measured.groupby("sex", sort=True)},
        "plvi_by_age_band": {
            band: _describe(measured.loc[measured["age_band"] == band, "plvi"])
            for band in AGE_BANDS
            if (measured["age_band"] == band).any()
        },
    }


def _is_categorical(values: pd.Series) -> bool:
    """Booleans, text and 0/1 codes are categories; any other numbers are continuous."""
    present = values.dropna()
    if pd.api.types.is_bool_dtype(present) or not pd.api.types.is_numeric_dtype(present):
        return True
    return set(present.unique()) <= {0, 1}


def _finite(value: float) -> float | None:
    """A number JSON can carry: NaN and infinity (an odds ratio with an empty cell) become None."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def compare_outcomes(cohort: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per outcome column: low-PLVI group (below the cohort median) against the high group.

    `outcomes` is keyed by `pseudonym`; where a patient has several measured studies the newest is used."""
    if "pseudonym" not in outcomes.columns:
        raise ValueError("the outcome table needs a 'pseudonym' column matching the export's pseudonyms")
    measured = cohort[cohort["plvi"].notna()].sort_values(["analysis_year", "study_year"])
    per_patient = measured.drop_duplicates("pseudonym", keep="last")[["pseudonym", "plvi"]]
    merged = per_patient.merge(outcomes, on="pseudonym", how="inner")
    median = float(merged["plvi"].median()) if len(merged) else math.nan
    low = merged["plvi"] < median
    rows = []
    for name in [c for c in outcomes.columns if c != "pseudonym"]:
        values = merged[name]
        row: dict[str, object] = {"outcome": name, "median_plvi_split": _finite(median), "n": int(values.notna().sum())}
        if _is_categorical(values):
            row.update(_fisher(values, low))
        else:
            row.update(_rank_sum(values.astype(float), low))
        rows.append(row)
    return pd.DataFrame(rows)


def _fisher(values: pd.Series, low: pd.Series) -> dict[str, object]:
    table = pd.crosstab(low[values.notna()], values.dropna())
    categories = [str(c) for c in table.columns]
    if table.shape != (2, 2):
        return {"test": "fisher_exact", "p_value": None, "note": f"needs two groups and two categories, got {table.shape}"}
    low_row, high_row = table.loc[True], table.loc[False]
    result = stats.fisher_exact(table.to_numpy())
    positive = table.columns[-1]
    return {
        "test": "fisher_exact",
        "categories": "/".join(categories),
        "low_group": f"{int(low_row[positive])}/{int(low_row.sum())} with {values.name}={positive}",
        "high_group": f"{int(high_row[positive])}/{int(high_row.sum())} with {values.name}={positive}",
        "statistic": _finite(float(result.statistic)),
        "p_value": _finite(float(result.pvalue)),
    }


def _rank_sum(values: pd.Series, low: pd.Series) -> dict[str, object]:
    low_values, high_values = values[low].dropna(), values[~low].dropna()
    if low_values.empty or high_values.empty:
        return {"test": "wilcoxon_rank_sum", "p_value": None, "note": "one group has no values"}
    # Mann-Whitney U is the Wilcoxon rank-sum test; scipy's version gives exact p-values for small groups.
    result = stats.mannwhitneyu(low_values, high_values, alternative="two-sided")
    return {
        "test": "wilcoxon_rank_sum",
        "low_group": f"median {low_values.median():.4g} (n={low_values.size})",
        "high_group": f"median {high_values.median():.4g} (n={high_values.size})",
        "statistic": _finite(float(result.statistic)),
        "p_value": _finite(float(result.pvalue)),
    }
