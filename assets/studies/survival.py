"""Stage 6, survival (asset ``survival_results``): ``run_survival``, one ``survival:`` entry.

Pure logic over pandas DataFrames (no Dagster, no study-spec object): each function takes the
columns to use as plain arguments, and every estimate comes back as one tidy row with the
columns of `RESULT_COLUMNS` (the study asset adds `study` and `model_version` and writes the
rows to `survival_results`). `run_survival` runs one `survival:` entry of a study YAML across
its cohorts; cut-offs are chosen on the training cohort only and applied unchanged elsewhere.

The statistics are in ``survival_km`` (Kaplan-Meier, log-rank, with their methods),
``survival_cox`` (Cox, C-index) and ``survival_cutoff`` (maxstat / median cut-offs); agreement
rows in ``agreement``; the tidy rows in ``results``. The input is one row per patient
(``store.survival_frame``: clinical columns, cohort, and for a classification study the best
model's out-of-fold predicted label for training patients, the evaluation's for the others).

Every row has `ci_flag` and `ci_note` (`assets.studies.ci_flags`): a zero-width interval, an
estimate outside its interval (the C-index's percentile bootstrap), or a bootstrap with fewer
than a handful of distinct resample values is said in the row, not treated as bad data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assets.studies.results import (
    _float,
    cohort_names,
    result_row,
    results_frame,
)
from assets.studies.survival_cox import (
    CoxDesign,
    CoxFit,
    c_index_replicates,
    cox_design,
    cox_risk,
    cox_rows,
    fit_cox,
    percentile_interval,
    ph_test_rows,
)
from assets.studies.survival_cutoff import (
    HIGH,
    LOW,
    Cutoff,
    apply_cutoff,
    choose_cutoff,
    plot_maxstat,
)
from assets.studies.survival_km import (
    EVENT_COL,
    TIME_COL,
    as_pandas,
    km_rows,
    logrank_rows,
    plot_km,
    survival_data,
)

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------------------------
# One survival entry across cohorts
# --------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def run_survival(
    frame: Any,
    endpoint: str,
    time: str,
    event: str,
    groups: str | None = None,
    cox_terms: Sequence[str] = (),
    times: Sequence[float] = (),
    cohort_col: str | None = "cohort",
    cutoff: Mapping[str, Any] | None = None,
    reference_levels: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    *,
    agreement: Mapping[str, Any] | None = None,
    group_order: Sequence[Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
    train_cohort: str = "train",
) -> tuple[pd.DataFrame, list[Path]]:
    """Run one `survival:` entry of a study on every cohort; returns (rows, figure paths).

    `frame` has one row per patient: `time`, `event`, the `groups` column, the `cox_terms`
    and `cohort_col` (train / internal_validation / external_validation...; without it all
    patients form one cohort `all`). `cutoff` ({method: maxstat|median, variable, minprop,
    maxprop}) is chosen on the `train_cohort` rows only, then `variable` is replaced by
    `low`/`high` in every cohort, so `groups` and `cox_terms` naming it use the cut (and
    `groups` defaults to it). Per cohort: Kaplan-Meier, log-rank (overall, pairwise, trend),
    univariable and multivariable Cox with PH tests, and C-index rows for the group and the
    multivariable model (models fitted on the training cohort, bootstrap CI). `agreement`
    ({score, readers: [...], categories}) adds `assets.studies.agreement.agreement_rows` per
    cohort. `cutoff` and `agreement` may also be objects with those attributes (the study
    spec's dataclasses). Figures (KM per cohort, the maxstat curve) go to `out_dir` if given.
    """
    frame = as_pandas(frame).copy()
    cutoff, agreement = _as_mapping(cutoff), _as_mapping(agreement)
    if cohort_col and cohort_col not in frame.columns:
        raise ValueError(f"cohort column '{cohort_col}' is not in the study data")
    if not cohort_col:
        cohort_col = "__cohort"
        frame[cohort_col] = "all"
    frame[cohort_col] = frame[cohort_col].astype("string")
    cohorts = cohort_names(frame[cohort_col])
    cox_terms = list(dict.fromkeys(cox_terms or []))
    times = [float(t) for t in (times or [])]
    reference_levels = dict(reference_levels or {})
    cutoff_variable = (cutoff or {}).get("variable")
    groups = groups or cutoff_variable
    needed = [c for c in dict.fromkeys([groups, *cox_terms, cutoff_variable]) if c]
    data = survival_data(frame, time, event, [*needed, cohort_col])
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    out = Path(out_dir) if out_dir is not None else None
    level_orders: dict[str, Sequence[Any]] = {}
    if groups and group_order is not None:
        level_orders[groups] = group_order

    chosen = None
    if cutoff:
        basis_name = train_cohort if train_cohort in cohorts else None
        if basis_name is None and cohorts == ["all"]:
            basis_name = "all"
        if basis_name is None:
            raise ValueError(
                f"cut-off for '{cutoff_variable}' must be chosen on the '{train_cohort}' cohort, "
                f"but the study data has only {cohorts}"
            )
        chosen, cutoff_row = _choose_on(data[data[cohort_col] == basis_name], cutoff, endpoint)
        cutoff_row["cohort"] = basis_name
        rows.append(cutoff_row)
        if chosen is None:
            return results_frame(rows), figures
        import pandas as pd

        numeric = pd.to_numeric(data[cutoff_variable], errors="coerce").to_numpy(float)
        data[cutoff_variable] = apply_cutoff(numeric, chosen)
        level_orders[cutoff_variable] = [LOW, HIGH]
        reference_levels.setdefault(cutoff_variable, LOW)
        if out is not None and chosen.method == "maxstat":
            from matplotlib.figure import Figure

            figure = Figure(figsize=(6, 4))
            plot_maxstat(chosen, figure.subplots())
            name = f"maxstat_{_slug(endpoint)}_{_slug(cutoff_variable)}.png"
            figures.append(_save(figure, out / name))

    designs = {
        term: cox_design(data, [term], reference_levels, level_orders)
        for term in dict.fromkeys([*([groups] if groups else []), *cox_terms])
    }
    multivariable = (
        cox_design(data, cox_terms, reference_levels, level_orders) if len(cox_terms) > 1 else None
    )
    fit_basis = train_cohort if train_cohort in cohorts else cohorts[0] if cohorts else None
    c_models = _c_index_models(
        data[data[cohort_col] == fit_basis] if fit_basis else data.iloc[:0],
        fit_basis,
        groups,
        cox_terms,
        designs,
        multivariable,
        alpha,
    )
    for cohort in cohorts:
        subset = data[data[cohort_col] == cohort]
        common = {"endpoint": endpoint, "cohort": cohort}
        group_order_here = level_orders.get(groups) if groups else None
        rows.extend(
            km_rows(
                subset,
                TIME_COL,
                EVENT_COL,
                groups,
                times,
                group_order=group_order_here,
                alpha=alpha,
                **common,
            )
        )
        if groups:
            rows.extend(
                logrank_rows(
                    subset, TIME_COL, EVENT_COL, groups, group_order=group_order_here, **common
                )
            )
        rows.extend(_cox_cohort_rows(subset, cox_terms, designs, multivariable, alpha, common))
        for name, (design, fit, basis_note) in c_models.items():
            rows.append(
                _c_index_row(
                    subset, name, design, fit, basis_note, n_bootstrap, seed, alpha, common
                )
            )
        if agreement:
            rows.extend(
                _agreement_cohort_rows(frame[frame[cohort_col] == cohort], agreement, alpha, common)
            )
        if out is not None:
            from matplotlib.figure import Figure

            figure = Figure(figsize=(7, 5.5))
            plot_km(
                subset,
                figure.subplots(),
                time=TIME_COL,
                event=EVENT_COL,
                group=groups,
                group_order=group_order_here,
                at_risk_times=times or None,
                title=f"{endpoint}: {cohort}",
                time_label=time,
                alpha=alpha,
            )
            figures.append(_save(figure, out / f"km_{_slug(endpoint)}_{_slug(cohort)}.png"))
    if cutoff and chosen.method == "maxstat":
        _adjust_for_cutoff_search(rows, basis_name, cutoff_variable, chosen)
    return results_frame(rows), figures


def _adjust_for_cutoff_search(
    rows: list[dict[str, Any]], basis: str, variable: str, chosen: Cutoff
) -> None:
    """p-values of groups made by a maxstat cut-off, on the cohort that chose the cut-off.

    A plain log-rank test of groups whose cut-off was chosen to maximise that very statistic is
    anti-conservative (about half of null data sets reach p < 0.05). On the cut-off's own
    cohort the overall log-rank p becomes the Lausen-Schumacher (1992) adjusted p of the
    maximally selected statistic; the other tests of those groups (pairwise, trend, Cox) have no
    such adjustment here and their p-values are not reported. Other cohorts are independent of
    the choice and keep their plain p-values.
    """
    for row in rows:
        tests_groups = row["analysis"].startswith(("logrank", "cox")) and variable in str(
            row["term"]
        )
        if row["cohort"] != basis or not tests_groups or math.isnan(row["p_value"]):
            continue
        if row["analysis"] == "logrank":
            row["p_value"] = _float(chosen.p_value)
            row["note"] = (
                f"{row['note']}; p adjusted for the cut-off search: Lausen-Schumacher 1992 "
                "(maxstat Lau92); the plain log-rank p of these data is not reported"
            ).lstrip("; ")
        else:
            row["p_value"] = math.nan
            row["note"] = (
                f"{row['note']}; p not reported: the cut-off was chosen on this cohort "
                "(see the logrank row's adjusted p)"
            ).lstrip("; ")


def _as_mapping(value: Any) -> dict[str, Any] | None:
    """A mapping, or an object with attributes (e.g. the study spec's dataclasses), as a dict."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return dict(vars(value))


def _choose_on(
    basis: pd.DataFrame, cutoff: Mapping[str, Any], endpoint: str
) -> tuple[Cutoff | None, dict[str, Any]]:
    """Choose the cut-off on the training rows; returns (cutoff or None, its result row)."""
    import pandas as pd

    variable = cutoff["variable"]
    minprop = float(cutoff.get("minprop", 0.1))
    maxprop = float(cutoff.get("maxprop", 0.9))
    try:
        chosen = choose_cutoff(
            pd.to_numeric(basis[variable], errors="coerce").to_numpy(float),
            basis[TIME_COL].to_numpy(float),
            basis[EVENT_COL].to_numpy(int),
            method=str(cutoff.get("method", "maxstat")),
            variable=variable,
            minprop=minprop,
            maxprop=maxprop,
        )
    except ValueError as error:  # no usable split is a result, the run goes on without it
        return None, result_row(endpoint, "", "cutoff", variable, note=f"not chosen: {error}")
    method_note = (
        f"maximally selected log-rank statistic over splits with {minprop:.0%}-{maxprop:.0%} "
        "of patients at or below the cut; p: Lausen-Schumacher 1992 approximation (maxstat Lau92)"
        if chosen.method == "maxstat"
        else "median of the training values"
    )
    row = result_row(
        endpoint,
        "",
        "cutoff",
        variable,
        estimate=chosen.value,
        statistic=chosen.statistic,
        p_value=chosen.p_value,
        n=chosen.n,
        events=chosen.events,
        note=f"{method_note}; low: value <= cut, high: value > cut; applied unchanged to all cohorts",
    )
    return chosen, row


def _c_index_models(
    basis: pd.DataFrame,
    basis_name: str | None,
    groups: str | None,
    cox_terms: Sequence[str],
    designs: Mapping[str, CoxDesign],
    multivariable: CoxDesign | None,
    alpha: float,
) -> dict[str, tuple[CoxDesign, CoxFit | None, str]]:
    """Cox models whose linear predictor is scored by C-index, fitted on the training cohort."""
    candidates: list[tuple[str, CoxDesign]] = []
    if groups:
        candidates.append((groups, designs[groups]))
    if multivariable is not None:
        candidates.append((f"multivariable: {' + '.join(cox_terms)}", multivariable))
    elif not groups and cox_terms:
        candidates.append((cox_terms[0], designs[cox_terms[0]]))
    models: dict[str, tuple[CoxDesign, CoxFit | None, str]] = {}
    for name, design in candidates:
        try:
            fit = fit_cox(basis, design, alpha=alpha)
        except Exception as error:  # reported on every cohort's c_index row
            models[name] = (design, None, f"not estimable on {basis_name}: {error}")
        else:
            models[name] = (design, fit, f"model fitted on {basis_name}")
    return models


def _cox_cohort_rows(
    subset: pd.DataFrame,
    cox_terms: Sequence[str],
    designs: Mapping[str, CoxDesign],
    multivariable: CoxDesign | None,
    alpha: float,
    common: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Univariable and multivariable Cox rows of one cohort, with the PH test of the model."""
    rows: list[dict[str, Any]] = []
    last_fit = None
    for term in cox_terms:
        term_rows, last_fit = cox_rows(
            subset, designs[term], analysis="cox_univariable", alpha=alpha, **common
        )
        rows.extend(term_rows)
    if multivariable is not None:
        term_rows, fit = cox_rows(
            subset, multivariable, analysis="cox_multivariable", alpha=alpha, **common
        )
        rows.extend(term_rows)
        if fit is not None:
            rows.extend(ph_test_rows(fit, model=" + ".join(cox_terms), **common))
    elif last_fit is not None:
        rows.extend(ph_test_rows(last_fit, model=cox_terms[0], **common))
    return rows


def _c_index_row(
    subset: pd.DataFrame,
    name: str,
    design: CoxDesign,
    fit: CoxFit | None,
    basis_note: str,
    n_bootstrap: int,
    seed: int,
    alpha: float,
    common: Mapping[str, str],
) -> dict[str, Any]:
    """Harrell's C with its bootstrap CI for one training-fitted model on one cohort."""
    if fit is None:
        return result_row(analysis="c_index", term=name, note=basis_note, **common)
    from assets.studies.ci_flags import interval_flag

    risk = cox_risk(fit, design, subset)
    usable = risk.notna()
    c, replicates = c_index_replicates(
        subset.loc[usable, TIME_COL],
        subset.loc[usable, EVENT_COL],
        risk[usable],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    low, high = percentile_interval(replicates, alpha)
    if math.isnan(c):
        return result_row(
            analysis="c_index",
            term=name,
            n=int(usable.sum()),
            events=int(subset.loc[usable, EVENT_COL].sum()),
            note=f"not estimable: no comparable pairs (no events); {basis_note}",
            **common,
        )
    flag, flag_note = (
        interval_flag(c, low, high, replicates, reason="no comparable pair in the resample")
        if len(replicates)
        else (None, None)  # bootstrap: 0, no interval asked for
    )
    return result_row(
        analysis="c_index",
        term=name,
        estimate=c,
        ci_low=low,
        ci_high=high,
        ci_flag=flag,
        ci_note=flag_note,
        n=int(usable.sum()),
        events=int(subset.loc[usable, EVENT_COL].sum()),
        note=(
            f"Harrell's C of the Cox linear predictor ({basis_note}); percentile bootstrap "
            f"{int(round((1 - alpha) * 100))}% CI, {n_bootstrap} resamples, seed {seed}"
        ),
        **common,
    )


def _agreement_cohort_rows(
    cohort_frame: pd.DataFrame,
    agreement: Mapping[str, Any],
    alpha: float,
    common: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Agreement rows of one cohort (score vs each reader, readers vs each other)."""
    from assets.studies.agreement import agreement_rows

    readers = agreement.get("readers") or []
    readers = [readers] if isinstance(readers, str) else list(readers)
    return agreement_rows(
        cohort_frame,
        agreement["score"],
        readers,
        categories=agreement.get("categories"),
        alpha=alpha,
        **common,
    ).to_dict("records")
