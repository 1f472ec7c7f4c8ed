"""Combined model (radiomics score + clinical columns) and its nomogram.

The radiomics score is the logit of the best radiomics model's predicted probability (clipped to
[1e-6, 1 - 1e-6]). For training patients it is the **out-of-fold** probability (the same
cross-validation folds as the tuning), for validation patients the final model's: fitting the
combined model on apparent training scores would over-weight the score of any model that
overfits its training data (random forests reach training AUC 1.0).

The combined model is an unpenalised logistic regression (``LogisticRegression(C=inf)``;
statsmodels is not installed): numeric columns median-imputed and used in their own units,
categorical columns one-hot encoded (``OneHotEncoder(handle_unknown="ignore")``) with the most
frequent training level as reference (dropped); missing categorical values are a level of their
own (``missing``). Standard errors come from the inverse observed Fisher information
(X' W X)^-1 with W = p(1 - p) at the fit; Wald z, p and odds-ratio 95% CIs.

Nomogram (the classic Harrell ``rms::nomogram`` layout): every predictor's contribution
beta * x is shifted to start at 0 over its training range (numeric: min..max; categorical: its
levels); the predictor with the largest contribution range spans 0-100 points and the others are
scaled by the same factor; total points map back to the linear predictor
lp = intercept + sum(minimum contributions) + total * scale / 100 and to the probability
1 / (1 + exp(-lp)). ``nomogram_probability(total_points(x))`` equals the model's prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

RADIOMICS_SCORE = "radiomics_score"


def radiomics_score(probability: np.ndarray) -> np.ndarray:
    """logit of a probability, clipped so 0 and 1 stay finite."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def clinical_types(
    frame: Any, columns: list[str] | tuple[str, ...], forced_categorical: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) among ``columns`` of a pandas frame: non-numeric dtypes or forced."""
    import pandas as pd

    numeric, categorical = [], []
    for column in columns:
        series = frame[column]
        is_number = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        (numeric if is_number and column not in forced_categorical else categorical).append(column)
    return numeric, categorical


@dataclass
class CombinedModel:
    """The fitted combined logistic model with its coefficient table."""

    radiomics_model: str
    numeric: list[str]
    categorical: list[str]
    pipeline: Any
    coefficients: pl.DataFrame
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    levels: dict[str, list[str]] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)

    def prepare(self, frame: Any) -> Any:
        """The model's input columns, categoricals as strings with ``missing`` for nulls."""
        data = frame[self.numeric + self.categorical].copy()
        for column in self.categorical:
            data[column] = data[column].map(lambda v: "missing" if _is_missing(v) else str(v))
        for column in self.numeric:
            data[column] = data[column].astype("float64")
        return data

    def predict_probability(self, frame: Any) -> np.ndarray:
        return self.pipeline.predict_proba(self.prepare(frame))[:, 1]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fit_combined(
    frame: Any,
    y: np.ndarray,
    numeric: list[str],
    categorical: list[str],
    radiomics_model: str,
) -> CombinedModel:
    """Fit the combined model on training rows of ``frame`` (pandas; radiomics_score + clinical)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    numeric = [RADIOMICS_SCORE, *[c for c in numeric if c != RADIOMICS_SCORE]]
    model = CombinedModel(radiomics_model, numeric, list(categorical), None, pl.DataFrame())
    data = model.prepare(frame)
    y = np.asarray(y, dtype=int)
    references = {c: str(data[c].value_counts().sort_index().idxmax()) for c in categorical}
    transformers = [("num", SimpleImputer(strategy="median"), numeric)]
    if categorical:
        transformers.append(
            (
                "cat",
                OneHotEncoder(
                    drop=[references[c] for c in categorical],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                categorical,
            )
        )
    pipeline = Pipeline(
        [
            ("design", ColumnTransformer(transformers, verbose_feature_names_out=False)),
            ("logistic", LogisticRegression(C=np.inf, max_iter=10000, tol=1e-10)),
        ]
    )
    pipeline.fit(data, y)
    model.pipeline = pipeline
    model.references = references
    imputer = pipeline.named_steps["design"].named_transformers_["num"]
    model.medians = dict(zip(numeric, imputer.statistics_.tolist(), strict=True))
    filled = data[numeric].fillna(model.medians)
    model.ranges = {c: (float(filled[c].min()), float(filled[c].max())) for c in numeric}
    if categorical:
        encoder = pipeline.named_steps["design"].named_transformers_["cat"]
        model.levels = {
            c: [references[c]] + [str(v) for v in cats if str(v) != references[c]]
            for c, cats in zip(categorical, encoder.categories_, strict=True)
        }
    model.coefficients = _coefficient_table(pipeline, data, y)
    return model


def _coefficient_table(pipeline: Any, data: Any, y: np.ndarray) -> pl.DataFrame:
    from statistics import NormalDist

    design = pipeline.named_steps["design"].transform(data)
    logistic = pipeline.named_steps["logistic"]
    names = [
        "(intercept)",
        *[str(n) for n in pipeline.named_steps["design"].get_feature_names_out()],
    ]
    beta = np.concatenate([logistic.intercept_, logistic.coef_.ravel()])
    X = np.column_stack([np.ones(len(design)), design])
    p = 0.5 * (1.0 + np.tanh(0.5 * (X @ beta)))
    information = X.T @ (X * (p * (1 - p))[:, None])
    covariance = np.linalg.pinv(information)
    se = np.sqrt(np.clip(np.diag(covariance), 0, None))
    z = np.divide(beta, se, out=np.full_like(beta, np.nan), where=se > 0)
    normal = NormalDist()
    p_values = [2 * (1 - normal.cdf(abs(v))) if np.isfinite(v) else math.nan for v in z]
    q = normal.inv_cdf(0.975)
    with np.errstate(over="ignore"):
        odds = np.exp(beta), np.exp(beta - q * se), np.exp(beta + q * se)
    return pl.DataFrame(
        {
            "term": names,
            "coef": beta,
            "se": se,
            "z": z,
            "p_value": p_values,
            "odds_ratio": odds[0],
            "or_ci_low": odds[1],
            "or_ci_high": odds[2],
        }
    )


# nomogram ----------------------------------------------------------------------------------
@dataclass
class Nomogram:
    """Points per predictor value, and the total-points -> probability scale."""

    points: pl.DataFrame  # predictor, value, points (tick marks of each predictor's axis)
    totals: pl.DataFrame  # total_points, linear_predictor, probability
    scale: float  # linear-predictor units per 100 points
    base: float  # linear predictor at 0 total points
    max_total: float
    numeric: dict[str, tuple[float, float, float]]  # predictor -> (coef, min, max)
    categorical: dict[str, dict[str, float]]  # predictor -> level -> coef (reference 0)
    medians: dict[str, float] = field(default_factory=dict)


def _coef_lookup(model: CombinedModel) -> dict[str, float]:
    table = model.coefficients
    return dict(zip(table["term"].to_list(), table["coef"].to_list(), strict=True))


def build_nomogram(model: CombinedModel) -> Nomogram:
    """The nomogram of a fitted combined model (see module docstring for the scaling)."""
    from matplotlib.ticker import MaxNLocator

    coefs = _coef_lookup(model)
    numeric = {c: (coefs[c], *model.ranges[c]) for c in model.numeric}
    categorical: dict[str, dict[str, float]] = {}
    for column in model.categorical:
        categorical[column] = {
            level: 0.0 if level == model.references[column] else coefs.get(f"{column}_{level}", 0.0)
            for level in model.levels[column]
        }
    effects = [abs(b) * (hi - lo) for b, lo, hi in numeric.values()]
    effects += [max(v.values()) - min(v.values()) for v in categorical.values()]
    scale = max(effects) if effects and max(effects) > 0 else 1.0
    base = coefs["(intercept)"]
    base += sum(min(b * lo, b * hi) for b, lo, hi in numeric.values())
    base += sum(min(v.values()) for v in categorical.values())
    rows = []
    for column, (b, lo, hi) in numeric.items():
        ticks = [t for t in MaxNLocator(nbins=6).tick_values(lo, hi) if lo <= t <= hi] or [lo, hi]
        for tick in ticks:
            rows.append(
                {
                    "predictor": column,
                    "value": f"{tick:g}",
                    "points": 100 * (b * tick - min(b * lo, b * hi)) / scale,
                }
            )
    for column, levels in categorical.items():
        low = min(levels.values())
        for level, b in levels.items():
            rows.append({"predictor": column, "value": level, "points": 100 * (b - low) / scale})
    max_total = float(sum(100 * e / scale for e in effects))
    grid = np.linspace(0.0, max_total, 41)
    lp = base + grid * scale / 100
    totals = pl.DataFrame(
        {"total_points": grid, "linear_predictor": lp, "probability": 1 / (1 + np.exp(-lp))}
    )
    return Nomogram(
        points=pl.DataFrame(
            rows, schema={"predictor": pl.String, "value": pl.String, "points": pl.Float64}
        ),
        totals=totals,
        scale=scale,
        base=base,
        max_total=max_total,
        numeric=numeric,
        categorical=categorical,
        medians=dict(model.medians),
    )


def total_points(nomogram: Nomogram, frame: Any) -> np.ndarray:
    """Total nomogram points of each row of a pandas frame (missing numeric -> training median)."""
    total = np.zeros(len(frame))
    for column, (b, lo, hi) in nomogram.numeric.items():
        x = frame[column].astype("float64").fillna(nomogram.medians.get(column, 0.0)).to_numpy()
        total += 100 * (b * x - min(b * lo, b * hi)) / nomogram.scale
    for column, levels in nomogram.categorical.items():
        low = min(levels.values())
        values = frame[column].map(lambda v: "missing" if _is_missing(v) else str(v))
        # an unseen level is encoded as all zeros by the model, i.e. the reference (coef 0)
        total += np.array([100 * (levels.get(v, 0.0) - low) / nomogram.scale for v in values])
    return total


def nomogram_probability(nomogram: Nomogram, total: np.ndarray) -> np.ndarray:
    lp = nomogram.base + np.asarray(total, dtype=np.float64) * nomogram.scale / 100
    return 1 / (1 + np.exp(-lp))


def plot_nomogram(nomogram: Nomogram, ax: Any) -> Any:
    """Classic nomogram: points axis, one axis per predictor, total points, probability."""
    from matplotlib.ticker import MaxNLocator

    predictors = list(dict.fromkeys(nomogram.points["predictor"].to_list()))
    rows = ["Points", *predictors, "Total points", "Predicted probability"]
    y_of = {name: len(rows) - i for i, name in enumerate(rows)}

    def axis_line(
        y: float,
        xs: list[float],
        labels: list[str],
        above: bool = False,
        extent: tuple[float, float] | None = None,
    ) -> None:
        low, high = extent if extent is not None else (min(xs), max(xs))
        ax.plot([low, high], [y, y], color="black", lw=1)
        for x, text in zip(xs, labels, strict=True):
            ax.plot([x, x], [y, y + 0.12], color="black", lw=1)
            ax.text(
                x,
                y + (0.2 if above else -0.18),
                text,
                ha="center",
                va="bottom" if above else "top",
                fontsize=7,
            )

    ticks = list(range(0, 101, 10))
    axis_line(y_of["Points"], ticks, [str(t) for t in ticks], above=True)
    for predictor in predictors:
        part = nomogram.points.filter(pl.col("predictor") == predictor)
        extent = None
        if predictor in nomogram.numeric:
            b, lo, hi = nomogram.numeric[predictor]
            extent = (0.0, 100 * abs(b) * (hi - lo) / nomogram.scale)
        axis_line(y_of[predictor], part["points"].to_list(), part["value"].to_list(), extent=extent)
    span = nomogram.max_total if nomogram.max_total > 0 else 100.0
    total_ticks = [t for t in MaxNLocator(nbins=8).tick_values(0, span) if 0 <= t <= span]
    axis_line(
        y_of["Total points"], [100 * t / span for t in total_ticks], [f"{t:g}" for t in total_ticks]
    )
    probs = [p for p in (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)]
    lp = np.log(np.array(probs) / (1 - np.array(probs)))
    totals = (lp - nomogram.base) * 100 / nomogram.scale
    keep = (totals >= 0) & (totals <= span)
    if keep.any():
        axis_line(
            y_of["Predicted probability"],
            [100 * t / span for t in totals[keep]],
            [f"{p:g}" for p, k in zip(probs, keep, strict=True) if k],
        )
    for name, y in y_of.items():
        ax.text(-4, y, name, ha="right", va="center", fontsize=8)
    ax.set_xlim(-45, 105)
    ax.set_ylim(0.3, len(rows) + 0.8)
    ax.axis("off")
    return ax
