"""Survival and agreement analyses against published references and hand computations.

References used here:
- rossi (lifelines' copy of Rossi et al. 1980): R `coxph(Surv(week, arrest) ~ fin + age + race
  + wexp + mar + paro + prio)` coefficients and SEs (Fox & Weisberg's appendix; the values
  lifelines' own tests pin).
- g3 (lifelines' copy of R coin's `glioma`, grade III, 17 patients): Kaplan-Meier by the
  product-limit formula with Greenwood/log(-log) CIs worked by hand; R `survdiff` on these
  data: (O-E)^2/V = 6.06, p = 0.0138, expected 1.49 (Control) and 4.51 (RIT) (Everitt &
  Hothorn, A Handbook of Statistical Analyses Using R, chapter "Survival Analysis").
- larynx (lifelines' copy of Klein & Moeschberger's data): trend statistic checked through
  identities against lifelines' log-rank tests.
- hohnloser (Lausen & Schumacher 1992, Table 1; R maxstat's `hohnloser` data): R
  `maxstat.test(Surv(month, cens) ~ EF, smethod = "LogRank", pmethod = "Lau92")` prints
  M = 3.5691, p-value = 0.01065, estimated cutpoint 39 (maxstat's saved example output), and
  `sapply(seq(0.5, 10, by = 0.5), pLausen92)` as pinned in ranger's C++ tests.
- Cohen (1968) Table 1 (200 patients, three diagnoses): kappa .492, weighted kappa .348 with
  Cohen's disagreement weights; Fleiss-Cohen-Everitt SEs .051 and .0755 as printed by the R
  package DMAR (`cohen_kappa`) for the same table.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from assets.studies.agreement import agreement_rows, clopper_pearson, cohen_kappa
from assets.studies.results import RESULT_COLUMNS
from assets.studies.survival import run_survival
from assets.studies.survival_cox import bootstrap_c_index, harrell_c, weighted_c_index
from assets.studies.survival_cutoff import lausen92_p, maxstat_cutoff
from assets.studies.survival_km import logrank_trend, r_quantile_time

Z975 = stats.norm.ppf(0.975)


def _row(results: pd.DataFrame, analysis: str, term: str, cohort: str | None = None) -> pd.Series:
    hit = results[(results["analysis"] == analysis) & (results["term"] == term)]
    if cohort is not None:
        hit = hit[hit["cohort"] == cohort]
    assert len(hit) == 1, f"expected one {analysis} row for {term}, got {len(hit)}"
    return hit.iloc[0]


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Cox: rossi against R's survival package
# --------------------------------------------------------------------------------------------

R_ROSSI = {  # term: (coef, se(coef)) from R coxph, Efron ties
    "fin": (-0.379422, 0.191379),
    "age": (-0.057438, 0.021999),
    "race": (0.313900, 0.307993),
    "wexp": (-0.149796, 0.212224),
    "mar": (-0.433704, 0.381868),
    "paro": (-0.084871, 0.195757),
    "prio": (0.091497, 0.028649),
}


def test_rossi_cox_matches_r_survival_through_a_survival_only_run(tmp_path):
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    results, figures = run_survival(
        rossi,
        endpoint="rearrest",
        time="week",
        event="arrest",
        groups="fin",
        cox_terms=list(R_ROSSI),
        times=[26, 52],
        cohort_col=None,
        cutoff=None,
        reference_levels=None,
        out_dir=tmp_path,
        n_bootstrap=200,
    )
    assert list(results.columns) == RESULT_COLUMNS
    for term, (coef, se) in R_ROSSI.items():
        row = _row(results, "cox_multivariable", term)
        # R prints 6 decimals: agreement to rounding
        assert row["coef"] == pytest.approx(coef, abs=1e-6)
        assert row["se"] == pytest.approx(se, abs=1e-6)
        assert row["estimate"] == pytest.approx(math.exp(row["coef"]), rel=1e-12)
        assert row["ci_low"] == pytest.approx(math.exp(coef - Z975 * se), rel=1e-5)
        assert row["ci_high"] == pytest.approx(math.exp(coef + Z975 * se), rel=1e-5)
        # Wald p from R's rounded coef and SE
        assert row["p_value"] == pytest.approx(2 * stats.norm.sf(abs(coef / se)), rel=1e-3)
        assert (row["n"], row["events"]) == (432, 114)
    # every term gets a proportional-hazards row, and the group and the model a C-index
    assert set(results.loc[results["analysis"] == "ph_test", "term"]) == set(R_ROSSI)
    c_rows = results[results["analysis"] == "c_index"].set_index("term")
    assert (
        c_rows.loc["fin", "estimate"]
        < c_rows.loc["multivariable: " + " + ".join(R_ROSSI), "estimate"]
    )
    model_c = c_rows.loc["multivariable: " + " + ".join(R_ROSSI)]
    assert model_c["ci_low"] < model_c["estimate"] < model_c["ci_high"]
    assert [p.name for p in figures] == ["km_rearrest_all.png"]
    assert _is_png(figures[0])


# --------------------------------------------------------------------------------------------
# Kaplan-Meier and log-rank: g3 (glioma) by hand and against R
# --------------------------------------------------------------------------------------------


def _loglog_ci(survival: float, greenwood: float) -> tuple[float, float]:
    """S^exp(+-z * sqrt(V) / |log S|): the log(-log) interval, written out by hand."""
    half_width = Z975 * math.sqrt(greenwood) / abs(math.log(survival))
    return survival ** math.exp(half_width), survival ** math.exp(-half_width)


def test_g3_kaplan_meier_and_logrank_match_hand_computation_and_r():
    from lifelines.datasets import load_g3

    g3 = load_g3()
    results, _ = run_survival(
        g3,
        endpoint="os",
        time="time",
        event="event",
        groups="group",
        cox_terms=["group"],
        times=[20, 40, 60],
        cohort_col=None,
        cutoff=None,
        reference_levels={"group": "Control"},
        out_dir=None,
        n_bootstrap=0,
    )
    # Control (6 patients): deaths at 9, 19, 32, 34; censored at 48, 50.
    # S(20) = 5/6 * 4/5 = 4/6; Greenwood sum d/(n(n-d)) = 1/(6*5) + 1/(5*4)
    s20 = 5 / 6 * 4 / 5
    row = _row(results, "km_survival", "Control@20")
    assert row["estimate"] == pytest.approx(s20, abs=1e-12)
    low, high = _loglog_ci(s20, 1 / 30 + 1 / 20)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-10)
    # S(40) = 4/6 * 3/4 * 2/3 = 2/6, Greenwood adds 1/(4*3) + 1/(3*2)
    s40 = s20 * 3 / 4 * 2 / 3
    row = _row(results, "km_survival", "Control@40")
    assert row["estimate"] == pytest.approx(1 / 3, abs=1e-12)
    low, high = _loglog_ci(s40, 1 / 30 + 1 / 20 + 1 / 12 + 1 / 6)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-10)
    # Control's last follow-up is 50: no estimate at 60 (R's summary(times=) drops it too)
    assert math.isnan(_row(results, "km_survival", "Control@60")["estimate"])
    # RIT (11 patients): deaths at 25 (11 at risk) and 53 (7 at risk)
    assert _row(results, "km_survival", "RIT@40")["estimate"] == pytest.approx(10 / 11)
    assert _row(results, "km_survival", "RIT@60")["estimate"] == pytest.approx(10 / 11 * 6 / 7)
    # number at risk = patients with time >= t
    at_risk = {
        f"{g}@{t}": int(((g3.group == g) & (g3.time >= t)).sum())
        for g in ("Control", "RIT")
        for t in (20, 40)
    }
    assert at_risk == {"Control@20": 4, "Control@40": 2, "RIT@20": 11, "RIT@40": 9}
    for term, count in at_risk.items():
        assert _row(results, "km_at_risk", term)["estimate"] == count
    # median: S = 1/2 exactly on [32, 34), so R's survfit prints (32 + 34) / 2 = 33; the
    # log(-log) lower band first falls below 1/2 at 9, the upper band never does (NA)
    median = _row(results, "km_median", "Control")
    assert median["estimate"] == 33
    assert median["ci_low"] == 9
    assert math.isnan(median["ci_high"])
    assert math.isnan(_row(results, "km_median", "RIT")["estimate"])  # S stays at 0.78

    # log-rank by hand: at each death time (n_control, n_rit, deaths in control, deaths in rit)
    table = [(6, 11, 1, 0), (5, 11, 1, 0), (4, 11, 0, 1), (4, 9, 1, 0), (3, 9, 1, 0), (0, 7, 0, 1)]
    expected_control = sum(Fraction(nc * (dc + dr), nc + nr) for nc, nr, dc, dr in table)
    variance = sum(
        Fraction(nc * nr * (dc + dr) * (nc + nr - dc - dr), (nc + nr) ** 2 * (nc + nr - 1))
        for nc, nr, dc, dr in table
    )
    chi_square = float((4 - expected_control) ** 2 / variance)
    assert float(expected_control) == pytest.approx(1.49, abs=0.005)  # R: Expected 1.49
    assert 6 - float(expected_control) == pytest.approx(4.51, abs=0.005)  # R: RIT 4.51
    logrank = _row(results, "logrank", "group: Control vs RIT")
    assert logrank["statistic"] == pytest.approx(chi_square, rel=1e-10)
    assert logrank["statistic"] == pytest.approx(6.06, abs=0.005)  # R survdiff
    assert logrank["p_value"] == pytest.approx(0.0138, abs=5e-5)
    assert (logrank["df"], logrank["n"], logrank["events"]) == (1, 17, 6)
    # with two groups the trend statistic is the log-rank statistic, whatever the scores
    trend = logrank_trend(g3.time, g3.event, g3.group, {"Control": 0.0, "RIT": 3.5})
    assert trend["statistic"] == pytest.approx(chi_square, rel=1e-10)
    assert trend["expected"][0] == pytest.approx(float(expected_control), rel=1e-12)
    assert trend["u"] < 0  # fewer deaths than expected in the higher-scored RIT group
    # the Cox term is labelled against its reference level
    hr = _row(results, "cox_univariable", "group=RIT vs Control")
    assert hr["estimate"] < 1


def test_r_median_rule_on_a_flat_half():
    # S drops to exactly 0.5 at 10 and stays there to the end: R takes (10 + 20) / 2
    assert r_quantile_time([0, 10, 20], [1.0, 0.5, 0.5]) == 15
    assert r_quantile_time([0, 10, 20], [1.0, 0.6, 0.4]) == 20
    assert math.isnan(r_quantile_time([0, 10], [1.0, 0.6]))


# --------------------------------------------------------------------------------------------
# Log-rank test for trend: larynx, checked through identities with lifelines' tests
# --------------------------------------------------------------------------------------------


def test_logrank_trend_on_larynx_agrees_with_lifelines_logrank_tests():
    from lifelines.datasets import load_larynx
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    larynx = load_larynx()
    stage = 1 + larynx["Stage_II"] + 2 * larynx["Stage_III"] + 3 * larynx["Stage_IV"]
    scores = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    trend = logrank_trend(larynx["time"], larynx["death"], stage, scores)
    overall = multivariate_logrank_test(larynx["time"], stage, larynx["death"])
    difference = trend["observed"] - trend["expected"]
    # the same O - E and covariance give lifelines' K-sample chi-square (22.76 on 3 df) ...
    quadratic = difference @ np.linalg.pinv(trend["covariance"]) @ difference
    assert quadratic == pytest.approx(overall.test_statistic, rel=1e-8)
    assert trend["observed"].tolist() == [15, 7, 17, 11]
    # ... the maximum of the trend statistic over all scores is that chi-square ...
    best = np.linalg.pinv(trend["covariance"]) @ difference
    best_trend = logrank_trend(
        larynx["time"], larynx["death"], stage, dict(zip(scores, best, strict=True))
    )
    assert best_trend["statistic"] == pytest.approx(overall.test_statistic, rel=1e-8)
    assert trend["statistic"] < overall.test_statistic
    # ... scores 0/0/1/1 give the two-sample log-rank of stages III-IV vs I-II ...
    late = stage >= 3
    split = logrank_trend(larynx["time"], larynx["death"], stage, {1: 0, 2: 0, 3: 1, 4: 1})
    two_sample = logrank_test(
        larynx["time"][late], larynx["time"][~late], larynx["death"][late], larynx["death"][~late]
    )
    assert split["statistic"] == pytest.approx(two_sample.test_statistic, rel=1e-10)
    # ... and the statistic does not depend on the location and scale of the scores
    shifted = logrank_trend(
        larynx["time"], larynx["death"], stage, {k: 10 - 3 * v for k, v in scores.items()}
    )
    assert shifted["statistic"] == pytest.approx(trend["statistic"], rel=1e-12)
    # hazard rises with stage: more deaths than expected at the higher stages
    assert trend["u"] > 0
    assert trend["p_value"] < 0.001


# --------------------------------------------------------------------------------------------
# C-index
# --------------------------------------------------------------------------------------------


def test_harrell_c_on_a_hand_computed_case():
    time = [2, 4, 4, 6, 8]
    event = [1, 1, 0, 1, 0]
    risk = [0.9, 0.4, 0.6, 0.4, 0.1]
    # comparable pairs (i dies first, or at the same time as a censored j) and their credit:
    # (1,2) 0.9>0.4: 1   (1,3) 0.9>0.6: 1   (1,4) 1   (1,5) 1
    # (2,3) tied time, 3 censored: 0.4<0.6: 0   (2,4) tied risk: 0.5   (2,5) 0.4>0.1: 1
    # (4,5) 0.4>0.1: 1            -> 6.5 / 8
    assert harrell_c(time, event, risk) == pytest.approx(6.5 / 8)
    c, low, high = bootstrap_c_index(time, event, risk, n_bootstrap=300, seed=7)
    assert c == pytest.approx(6.5 / 8)
    assert 0 <= low <= c <= high <= 1
    assert bootstrap_c_index(time, event, risk, n_bootstrap=300, seed=7) == (c, low, high)


def test_bootstrap_replicates_equal_lifelines_on_the_resampled_rows():
    from lifelines.datasets import load_rossi
    from lifelines.utils import concordance_index

    rossi = load_rossi()
    time, event, risk = (
        rossi["week"].to_numpy(),
        rossi["arrest"].to_numpy(),
        rossi["prio"].to_numpy(float),
    )
    rng = np.random.default_rng(11)
    samples = rng.integers(0, len(rossi), size=(4, len(rossi)))
    counts = np.stack([np.bincount(s, minlength=len(rossi)) for s in samples])
    replicates = weighted_c_index(time, event, risk, counts)
    for sample, replicate in zip(samples, replicates, strict=True):
        assert replicate == pytest.approx(
            concordance_index(time[sample], -risk[sample], event[sample]), rel=1e-12
        )


# --------------------------------------------------------------------------------------------
# Cut-offs: maximally selected log-rank statistics
# --------------------------------------------------------------------------------------------

# Lausen & Schumacher (1992) Table 1: ejection fraction (%), recurrence-free months, event
HOHNLOSER = """
11 1 0; 11 5 1; 12 14 0; 13 2 1; 13 10 0; 13 39 0; 15 16 1; 17 17 0; 20 1 1; 20 1 1; 20 1 1;
20 8 1; 20 29 0; 21 22 1; 22 1 0; 22 3 0; 22 11 1; 22 15 0; 23 13 0; 24 1 0; 24 1 0; 24 3 1;
24 5 1; 24 7 1; 24 11 0; 24 33 0; 25 3 1; 25 16 1; 26 1 1; 26 13 0; 26 23 0; 27 20 0; 28 12 0;
30 1 0; 30 1 1; 31 18 1; 31 20 0; 32 23 0; 33 9 1; 33 12 0; 33 17 0; 33 21 0; 34 1 0; 34 5 1;
34 14 1; 34 38 0; 36 6 0; 37 1 1; 38 3 1; 38 12 0; 38 18 0; 39 8 1; 40 19 0; 41 3 0; 41 10 0;
41 15 1; 43 19 0; 43 31 0; 43 33 0; 44 23 0; 44 24 0; 49 5 0; 50 13 0; 51 4 1; 51 21 0; 51 28 0;
52 3 0; 52 16 0; 52 37 0; 56 1 0; 56 3 1; 56 33 0; 57 23 0; 57 29 0; 58 5 1; 58 9 0; 58 36 0;
59 19 1; 60 1 0; 60 10 0; 61 7 0; 64 1 0; 64 6 0; 64 7 0; 64 14 0; 65 6 0; 70 5 0; 70 23 0;
72 36 0; 75 30 0; 77 10 0; 77 20 0; 80 7 0; 93 22 0
"""


def test_maxstat_reproduces_r_maxstat_on_the_lausen_schumacher_data():
    data = np.array([r.split() for r in HOHNLOSER.replace("\n", " ").split(";")], dtype=float)
    assert data.shape == (94, 3)
    cutoff = maxstat_cutoff(data[:, 0], data[:, 1], data[:, 2], variable="EF")
    assert cutoff.value == 39
    assert cutoff.statistic == pytest.approx(3.5691, abs=5e-5)
    assert cutoff.p_value == pytest.approx(0.01065, abs=5e-6)


def test_lausen92_p_matches_r_plausen92():
    r_values = [
        1.0, 0.967882898076573, 0.819678995766699, 0.463872768757117, 0.189802453892004,
        0.0578438845691903, 0.0133240079314344, 0.00233924318507284, 0.00031467775847682,
        3.25492795226314e-05, 2.59527010078785e-06, 1.59801511710768e-07, 7.6090999589879e-09,
        2.80479710245055e-10, 8.01032048074225e-12, 1.77366479130538e-13, 3.04652951223938e-15,
        4.06114941874027e-17, 4.20307813816918e-19, 3.37831711514353e-21,
    ]  # fmt: skip
    ours = [lausen92_p(b, 0.1, 0.9) for b in np.arange(1, 21) * 0.5]
    assert ours == pytest.approx(r_values, rel=1e-12)


def _biomarker_cohort(rng: np.random.Generator, n: int, low: float, high: float) -> pd.DataFrame:
    """Exponential survival, hazard tripled above a true cut-point of 6; censoring at random."""
    value = rng.uniform(low, high, n)
    hazard = np.where(value > 6, 0.06, 0.02)
    event_time = rng.exponential(1 / hazard)
    censor_time = rng.uniform(12, 72, n)
    return pd.DataFrame(
        {
            "cd3_density": value,
            "rfs_months": np.minimum(event_time, censor_time).round(1),
            "rfs_event": (event_time <= censor_time).astype(int),
        }
    )


def test_cutoff_found_on_train_and_applied_unchanged_to_validation(tmp_path):
    rng = np.random.default_rng(2024)
    train = _biomarker_cohort(rng, 400, 0, 10).assign(cohort="train")
    validation = _biomarker_cohort(rng, 150, 3, 12).assign(cohort="external_validation")
    frame = pd.concat([train, validation], ignore_index=True)
    # two readers and an AI score for the agreement rows
    frame["ai_grade"] = rng.integers(0, 3, len(frame))
    frame["reader_1"] = np.where(
        rng.random(len(frame)) < 0.8, frame["ai_grade"], rng.integers(0, 3, len(frame))
    )
    results, figures = run_survival(
        frame,
        endpoint="rfs",
        time="rfs_months",
        event="rfs_event",
        groups=None,
        cox_terms=["cd3_density"],
        times=[36, 60],
        cohort_col="cohort",
        cutoff={"method": "maxstat", "variable": "cd3_density"},
        reference_levels=None,
        out_dir=tmp_path,
        agreement={"score": "ai_grade", "readers": ["reader_1"]},
        n_bootstrap=200,
    )
    cut_row = _row(results, "cutoff", "cd3_density")
    reference = maxstat_cutoff(train["cd3_density"], train["rfs_months"], train["rfs_event"])
    assert cut_row["cohort"] == "train"
    assert cut_row["estimate"] == reference.value
    assert abs(cut_row["estimate"] - 6) < 0.75  # the true cut-point
    assert cut_row["p_value"] < 1e-4
    high_in_validation = int((validation["cd3_density"] > cut_row["estimate"]).sum())
    at_risk = _row(results, "km_at_risk", "high@36", cohort="external_validation")
    assert at_risk["n"] == high_in_validation
    hr = _row(results, "cox_univariable", "cd3_density=high vs low", cohort="train")
    # on the cohort that chose the cut-off, a p-value of these groups would be anti-conservative:
    # the overall log-rank p is the Lausen-Schumacher adjusted one, the Cox p is not reported
    assert 2 < hr["estimate"] < 5 and np.isnan(hr["p_value"])
    assert "cut-off was chosen on this cohort" in hr["note"]
    train_logrank = results[(results["analysis"] == "logrank") & (results["cohort"] == "train")]
    assert train_logrank["p_value"].iloc[0] == cut_row["p_value"]
    validation_hr = _row(
        results, "cox_univariable", "cd3_density=high vs low", cohort="external_validation"
    )
    assert np.isfinite(validation_hr["p_value"])
    assert _row(results, "c_index", "cd3_density", cohort="external_validation")["estimate"] > 0.55
    assert set(results["cohort"]) == {"train", "external_validation"}
    assert {"agreement_accuracy", "kappa", "weighted_kappa", "confusion_matrix"} <= set(
        results["analysis"]
    )
    names = sorted(p.name for p in figures)
    assert names == [
        "km_rfs_external_validation.png",
        "km_rfs_train.png",
        "maxstat_rfs_cd3_density.png",
    ]
    assert all(_is_png(p) for p in figures)


def test_maxstat_p_value_is_not_small_without_an_effect():
    rng = np.random.default_rng(5)
    null = _biomarker_cohort(rng, 300, 0, 10)
    # shuffle the (time, event) pairs across patients: the biomarker carries no information
    outcome = null[["rfs_months", "rfs_event"]].to_numpy()[rng.permutation(len(null))]
    null["rfs_months"], null["rfs_event"] = outcome[:, 0], outcome[:, 1].astype(int)
    cutoff = maxstat_cutoff(null["cd3_density"], null["rfs_months"], null["rfs_event"])
    assert cutoff.p_value > 0.05
    # the correction: the naive p of the best split is much smaller than the adjusted one
    assert 2 * stats.norm.sf(cutoff.statistic) < cutoff.p_value


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------

COHEN_1968 = np.array([[88, 10, 2], [14, 40, 6], [18, 10, 12]])  # judge B rows, judge A columns


def test_kappa_and_accuracy_on_cohens_table_by_hand():
    n = 200
    # accuracy: (88 + 40 + 12) / 200 = 0.70; exact CI from beta quantiles
    accuracy_low, accuracy_high = clopper_pearson(140, n)
    assert accuracy_low == pytest.approx(stats.beta.ppf(0.025, 140, 61), rel=1e-9)
    assert accuracy_high == pytest.approx(stats.beta.ppf(0.975, 141, 60), rel=1e-9)
    # kappa: p_o = 0.70; margins rows .50/.30/.20, columns .60/.30/.10
    # p_e = .5*.6 + .3*.3 + .2*.1 = 0.41; kappa = (0.70 - 0.41) / (1 - 0.41) = 0.29 / 0.59
    result = cohen_kappa(COHEN_1968)
    assert result["kappa"] == pytest.approx(0.29 / 0.59, rel=1e-12)
    assert result["kappa"] == pytest.approx(0.492, abs=5e-4)  # Cohen 1968
    assert result["se"] == pytest.approx(0.051, abs=5e-4)  # FCE 1969 (DMAR)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((0.392, 0.591), abs=5e-4)
    # weighted kappa with Cohen's disagreement weights 1 (D-N), 3 (D-P), 6 (N-P):
    # q_o = .05+.07 + 3(.01+.09) + 6(.03+.05) = 0.90, q_c = .15+.18 + 3(.05+.12) + 6(.03+.06)
    # = 1.38; kappa_w = 1 - 0.90 / 1.38
    disagreement = np.array([[0, 1, 3], [1, 0, 6], [3, 6, 0]])
    weighted = cohen_kappa(COHEN_1968, 1 - disagreement / 6)
    assert weighted["kappa"] == pytest.approx(1 - 0.90 / 1.38, rel=1e-12)
    assert weighted["kappa"] == pytest.approx(0.348, abs=5e-4)  # Cohen 1968
    assert weighted["se"] == pytest.approx(0.0755, abs=5e-5)  # FCE 1969 (DMAR)


def test_agreement_rows_match_sklearn_and_the_exact_interval():
    from sklearn.metrics import cohen_kappa_score

    # expand Cohen's table into patients: score = judge A (columns), reader = judge B (rows)
    reader, score = np.nonzero(np.ones_like(COHEN_1968))
    repeats = COHEN_1968[reader, score]
    frame = pd.DataFrame(
        {"reader_b": np.repeat(reader, repeats), "ai_score": np.repeat(score, repeats)}
    )
    rows = agreement_rows(frame, "ai_score", ["reader_b"], endpoint="dx", cohort="train")
    accuracy = _row(rows, "agreement_accuracy", "ai_score vs reader_b")
    assert accuracy["estimate"] == pytest.approx(0.70)
    assert (accuracy["ci_low"], accuracy["ci_high"]) == pytest.approx(
        (stats.beta.ppf(0.025, 140, 61), stats.beta.ppf(0.975, 141, 60)), rel=1e-9
    )
    for weights in ("linear", "quadratic"):
        row = _row(rows, "weighted_kappa", f"ai_score vs reader_b ({weights})")
        expected = cohen_kappa_score(frame["reader_b"], frame["ai_score"], weights=weights)
        assert row["estimate"] == pytest.approx(expected, rel=1e-12)
    assert _row(rows, "weighted_kappa", "ai_score vs reader_b (quadratic)")[
        "estimate"
    ] == pytest.approx(0.4545455, abs=1e-7)
    assert _row(rows, "confusion_matrix", "reader_b=2 | ai_score=0")["estimate"] == 18
    assert _row(rows, "category_count", "ai_score=0")["estimate"] == 120
    assert _row(rows, "category_percent", "reader_b=1")["estimate"] == pytest.approx(30.0)


# --------------------------------------------------------------------------------------------
# Awkward cohorts become rows with notes; configuration errors name the column
# --------------------------------------------------------------------------------------------


def test_awkward_cohorts_give_notes_not_crashes():
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    frame = rossi.assign(
        cohort=np.where(np.arange(len(rossi)) % 3 == 0, "internal_validation", "train"),
        prio_group=pd.cut(rossi["prio"], [-1, 1, 3, 100], labels=["0-1", "2-3", "4+"]).astype(str),
    )
    validation = frame["cohort"] == "internal_validation"
    frame.loc[validation, "arrest"] = 0  # no events in validation
    frame.loc[validation, "prio_group"] = "0-1"  # and a single group
    frame["reader_1"] = frame["prio_group"]
    frame["reader_2"] = np.where(np.arange(len(frame)) % 5 == 0, "4+", frame["prio_group"])
    results, _ = run_survival(
        frame,
        endpoint="rearrest",
        time="week",
        event="arrest",
        groups="prio_group",
        cox_terms=["prio_group", "age"],
        times=[26],
        cohort_col="cohort",
        agreement={"score": "prio_group", "readers": ["reader_1", "reader_2"]},
        n_bootstrap=50,
    )
    validation_rows = results[results["cohort"] == "internal_validation"].set_index("analysis")
    assert "not tested" in validation_rows.loc["logrank", "note"]
    assert "no events" in validation_rows.loc["cox_multivariable", "note"]
    assert (
        "not estimable"
        in results.query("cohort == 'internal_validation' and analysis == 'c_index'")["note"].iloc[
            0
        ]
    )
    # the trend test runs on the ordered train groups; readers are compared with each other too
    assert (
        _row(results, "logrank_trend", "prio_group: 0-1 vs 2-3 vs 4+", cohort="train")["p_value"]
        < 0.05
    )
    assert (
        _row(results, "agreement_accuracy", "prio_group vs reader_1", cohort="train")["estimate"]
        == 1
    )
    assert _row(results, "kappa", "reader_2 vs reader_1", cohort="train")["estimate"] < 1


def test_configuration_errors_name_the_column():
    from lifelines.datasets import load_g3

    g3 = load_g3()
    with pytest.raises(ValueError, match="sex_code"):
        run_survival(g3, "os", "time", "event", groups="sex_code", cohort_col=None)
    with pytest.raises(ValueError, match="event column 'status' must be coded 0/1"):
        run_survival(
            g3.assign(status=g3["event"].astype(int) + 1), "os", "time", "status", cohort_col=None
        )
    with pytest.raises(ValueError, match="reference level 'Placebo'"):
        run_survival(
            g3,
            "os",
            "time",
            "event",
            cox_terms=["group"],
            reference_levels={"group": "Placebo"},
            cohort_col=None,
        )
    with pytest.raises(ValueError, match="'train' cohort"):
        run_survival(
            g3.assign(cohort="external_validation", age2=g3["age"]),
            "os", "time", "event", cohort_col="cohort", cutoff={"method": "median", "variable": "age2"},
        )  # fmt: skip
