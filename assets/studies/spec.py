"""Study specification: one study YAML (CONTRACT section 4) parsed into validated dataclasses.

``load_study(path)`` reads the YAML and returns a ``StudySpec``; every unknown key and every
wrong type is a ``StudySpecError`` whose message names the file, the key (dotted path, e.g.
``split.seed``) and what is allowed. Defaults filled in here (and written back by
``StudySpec.resolved_yaml()`` so a model version records them):

- ``models``: all five (logistic_regression, svm, random_forest, decision_tree, xgboost)
- ``bootstrap``: 1000 resamples
- ``selection``: ``{variance_min: 0.0, max_correlation: 0.9, method: lasso}``; ``n_features``
  (mrmr/univariate: how many to keep, default 10; lasso: optional cap) and ``lasso_c`` (fixed
  inverse penalty; default null = chosen by stratified cross-validation on training)
- ``split``: ``internal_validation_fraction: 0.3``, ``external_validation_centers: []``, ``seed: 42``
- ``best_model``: ``{metric: auc, cohort: cv}``, the only rule allowed: the cross-validated
  (nested) training AUC. A validation cohort (winner's curse) or the apparent training AUC is
  refused with a ``StudySpecError`` naming the file and ``best_model.cohort``
- ``harmonization``: ``{method: none}`` by default; ``combat`` / ``zscore_per_center`` with
  ``batch`` (``center_id`` or an imaging_series field), ``covariates`` (never the label),
  ``external: refuse | estimate_unlabeled``, ``compare_raw`` (see ``HarmonizationSpec``)
- ``validation``: ``{nested_cv: true, optimism_bootstrap: 0, recalibrate_external: false}``
- ``selection.min_icc``: optional; keep features whose ``feature_robustness`` ICC lower bound
  reaches it
- ``case_rule``: ``largest_roi`` (which case represents a patient with several; also ``first``
  or ``phase:<name>``, applied by the shared pivot ``assets.clinical.pivot``)
- ``grids``: per-model overrides of the default tuning grids, e.g. ``{xgboost: {max_depth: [2, 3]}}``
  (parameter names of the estimator; checked against it when the pipeline is built)
- ``cv_folds``: folds of the stratified cross-validation on the training cohort (integer >= 2,
  default 5); it is used for every cross-validation of training (``GridSearchCV`` tuning, the
  out-of-fold training probabilities behind the thresholds and the combined model, the SVM's
  Platt calibration). It is an upper bound: with fewer patients of the minority class in training
  the folds are reduced to that count, with a note (``assets.studies.pipeline.training_cv``);
  below 2 training stops with a ``StudyDataError``
- ``auc_drop_warning``: optional AUC drop that triggers a warning, used in two places: (1) by
  ``assets.studies.evaluate.auc_drop_warnings``, a validation cohort whose AUC is more than this
  below the apparent training AUC of the best model (run warnings, ``summary.json``); (2) by the
  non-blocking Dagster asset check ``auc_drop_vs_previous_version``
  (``assets.studies.history.auc_drop_outcome``): the best model's external-validation AUC
  (each ``external_validation*`` cohort) dropping by more than this from the previous model
  version to the latest one. Without it there are no such warnings (the check passes with a
  note)

Paper metadata (``PAPER_KEYS``; left out of the resolved YAML, so they never change a model
version): ``funding`` (grant ids, ``grants.grant_id``; view ``grant_outputs``), ``publications``
(DOIs, normalised to lower case without a doi.org prefix, or PMIDs), ``intended_use`` (text) and
``limitations`` (list of text) for the model card (``assets.studies.paper.model_card``).

Survival entries (``survival:`` list; consumed by ``assets.studies.survival``) are
``SurvivalSpec`` dataclasses with exactly the fields ``endpoint, time, event, groups, cox_terms,
times, cutoff, reference_levels, agreement``; ``cutoff`` is a ``CutoffSpec(method, variable)``
(method ``maxstat`` or ``median``), ``agreement`` an ``AgreementSpec(score, readers)``,
``reference_levels`` a ``{term: level}`` mapping. A survival-only study leaves out ``label``,
``features``, ``selection``, ``models``, ``grids``, ``best_model`` and ``cv_folds``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODEL_NAMES = ("logistic_regression", "svm", "random_forest", "decision_tree", "xgboost")
SELECTION_METHODS = ("lasso", "mrmr", "univariate")
BEST_MODEL_METRICS = ("auc", "brier", "accuracy", "sensitivity", "specificity", "ppv", "npv")
BEST_MODEL_COHORTS = ("cv",)  # training criteria only: never a validation cohort, never apparent
HARMONIZATION_METHODS = ("none", "combat", "zscore_per_center")
HARMONIZATION_EXTERNAL = ("refuse", "estimate_unlabeled")
# imaging_series fields a harmonization batch may name (besides center_id)
IMAGING_BATCH_FIELDS = (
    "manufacturer",
    "manufacturer_model",
    "convolution_kernel",
    "slice_thickness_mm",
    "magnetic_field_strength",
    "kvp",
)
CUTOFF_METHODS = ("maxstat", "median")
CASE_RULES = ("largest_roi", "first", "phase:<name>", "reader:<name>", "all_lesions")
DEFAULT_CV_FOLDS = 5
CLASSIFICATION_ONLY_KEYS = (
    "selection",
    "models",
    "grids",
    "best_model",
    "cv_folds",
    "harmonization",
    "validation",
)
PAPER_KEYS = ("funding", "publications", "intended_use", "limitations")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class StudySpecError(ValueError):
    """A study YAML that cannot be used; the message names the file, the key and what is allowed."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}")


@dataclass(frozen=True)
class RadiomicsFeatures:
    """Radiomics features of one pyradiomics parameter set (``params_id`` = parameter file stem)."""

    params_id: str


@dataclass(frozen=True)
class ExternalFeatures:
    """A landed external feature table (``feature_set`` = file stem under landing/features/)."""

    feature_set: str


@dataclass(frozen=True)
class FeatureSpec:
    """Model inputs: radiomics and/or external feature sets, and clinical columns (combined model).

    ``categorical`` forces numeric-coded clinical columns to be one-hot encoded; string/bool
    columns are categorical anyway.
    """

    radiomics: RadiomicsFeatures | None = None
    external: tuple[ExternalFeatures, ...] = ()
    clinical: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitSpec:
    development_centers: tuple[str, ...]
    internal_validation_fraction: float = 0.3
    external_validation_centers: tuple[str, ...] = ()
    seed: int = 42


@dataclass(frozen=True)
class SelectionSpec:
    variance_min: float = 0.0
    max_correlation: float | None = 0.9
    method: str = "lasso"
    n_features: int | None = None
    lasso_c: float | None = None
    min_icc: float | None = None  # keep features whose feature_robustness ICC ci_low reaches it

    @property
    def k(self) -> int:
        """Features kept by mrmr/univariate (default 10)."""
        return self.n_features if self.n_features is not None else 10


@dataclass(frozen=True)
class BestModelRule:
    metric: str = "auc"
    cohort: str = "cv"


@dataclass(frozen=True)
class HarmonizationSpec:
    """Batch-effect harmonization, a pipeline step fitted on training only (``harmonize``).

    ``method``: ``none`` | ``combat`` (ComBat with neuroCombat-style covariates, combatlearn) |
    ``zscore_per_center`` (each batch level standardised by its own training mean and SD).
    ``batch``: ``center_id`` or an ``imaging_series`` field (e.g. ``manufacturer``).
    ``covariates``: clinical columns whose effect ComBat protects (never the study's label).
    ``external``: a batch level never seen in training is ``refuse``d (an error), or its
    location/scale is estimated from its own features only (``estimate_unlabeled``; no labels).
    ``compare_raw``: also fit every model without harmonization and report both side by side.
    """

    method: str = "none"
    batch: str = "center_id"
    covariates: tuple[str, ...] = ()
    external: str = "refuse"
    compare_raw: bool = False

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass(frozen=True)
class ValidationSpec:
    """How the training cohort validates the models (all on training only).

    ``nested_cv``: the cross-validated AUC and the out-of-fold probabilities (thresholds, the
    combined model's score) come from a nested CV (tuning repeated inside every outer fold, on
    ``inner_cv_folds`` stratified folds, default 3; the outer folds are ``cv_folds``).
    ``optimism_bootstrap``: B > 0 adds Harrell's bootstrap optimism-corrected AUC of each model.
    ``recalibrate_external``: refit intercept and slope on each external center (reported beside
    the untouched model, never replacing it).
    """

    nested_cv: bool = True
    inner_cv_folds: int = 3
    optimism_bootstrap: int = 0
    recalibrate_external: bool = False


@dataclass(frozen=True)
class CutoffSpec:
    """Cut-off of a continuous ``variable`` chosen on training (``maxstat`` or ``median``)."""

    method: str
    variable: str


@dataclass(frozen=True)
class AgreementSpec:
    """Agreement of a ``score`` column with one or more reader columns."""

    score: str
    readers: tuple[str, ...]


@dataclass(frozen=True)
class SurvivalSpec:
    """One survival analysis: Kaplan-Meier by ``groups``, log-rank, Cox on ``cox_terms``.

    ``time``/``event`` are clinical columns; ``times`` the time points (same unit as ``time``)
    at which survival is reported; ``reference_levels`` maps a categorical term to its
    reference level.
    """

    endpoint: str
    time: str
    event: str
    groups: str | None = None
    cox_terms: tuple[str, ...] = ()
    times: tuple[float, ...] = ()
    cutoff: CutoffSpec | None = None
    reference_levels: dict[str, Any] = field(default_factory=dict)
    agreement: AgreementSpec | None = None


@dataclass(frozen=True)
class StudySpec:
    """A validated study. ``source`` is the YAML file it came from (for error messages)."""

    name: str
    source: str
    split: SplitSpec
    label: str | None = None
    description: str | None = None
    cohort_sql: str | None = None
    cohort_query: str | None = None
    features: FeatureSpec = field(default_factory=FeatureSpec)
    case_rule: str = "largest_roi"
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    models: tuple[str, ...] = MODEL_NAMES
    grids: dict[str, dict[str, list]] = field(default_factory=dict)
    bootstrap: int = 1000
    best_model: BestModelRule = field(default_factory=BestModelRule)
    auc_drop_warning: float | None = None
    survival: tuple[SurvivalSpec, ...] = ()
    cv_folds: int = DEFAULT_CV_FOLDS
    harmonization: HarmonizationSpec = field(default_factory=HarmonizationSpec)
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    # paper metadata (never part of the model version: see PAPER_KEYS)
    funding: tuple[str, ...] = ()
    publications: tuple[str, ...] = ()
    intended_use: str | None = None
    limitations: tuple[str, ...] = ()

    @property
    def is_classification(self) -> bool:
        return self.label is not None

    def to_dict(self) -> dict[str, Any]:
        """The resolved study (defaults filled in) as plain YAML-able data."""
        data = _plain(asdict(self))
        data.pop("source")
        for key in PAPER_KEYS:  # who paid and where it was published do not change a model
            data.pop(key, None)
        if not self.is_classification:
            for key in CLASSIFICATION_ONLY_KEYS:
                data.pop(key)
        return data

    def resolved_yaml(self) -> str:
        """Canonical YAML of the resolved study: comments and key order do not change it."""
        return yaml.safe_dump(self.to_dict(), sort_keys=True, allow_unicode=True)


def _plain(value: Any) -> Any:
    """Lists instead of tuples, and no ``None`` entries (absent keys take their defaults)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# parsing ---------------------------------------------------------------------------------
def load_study(path: str | Path) -> StudySpec:
    """Read and validate one study YAML; raises ``StudySpecError`` naming file, key and rule."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise StudySpecError(source, "(file)", f"cannot be read ({error})") from error
    return parse_study_text(text, source)


def parse_study_text(text: str, source: str = "<study>") -> StudySpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StudySpecError(source, "(yaml)", f"is not valid YAML: {error}") from error
    return parse_study(data, source)


_TOP_KEYS = {
    "name": "study name (lowercase snake_case)",
    "description": "free text",
    "cohort_sql": "path of a .sql file returning patient_key",
    "cohort_query": "inline SQL returning patient_key",
    "label": "binary clinical column",
    "features": "{radiomics: {params_id}, external: {feature_set}, clinical: [...]}",
    "case_rule": "largest_roi | first | phase:<name> | reader:<name> | all_lesions",
    "split": "{development_centers, internal_validation_fraction, external_validation_centers, seed}",
    "selection": "{variance_min, max_correlation, method, n_features, lasso_c, min_icc}",
    "models": f"list of {', '.join(MODEL_NAMES)}",
    "grids": "{model: {parameter: [values]}}",
    "bootstrap": "number of bootstrap resamples",
    "best_model": "{metric: auc, cohort: cv} (cross-validated on training only)",
    "harmonization": "{method, batch, covariates, external, compare_raw}",
    "validation": "{nested_cv, inner_cv_folds, optimism_bootstrap, recalibrate_external}",
    "auc_drop_warning": "AUC drop that triggers a warning",
    "cv_folds": "folds of the stratified cross-validation on training (integer >= 2)",
    "survival": "list of survival analyses",
    "funding": "list of grant ids (grants.grant_id) that fund the study",
    "publications": "list of DOIs or PMIDs of the papers that report the study",
    "intended_use": "free text: the model's intended use (model card)",
    "limitations": "list of known limits (model card)",
}


def parse_study(data: Any, source: str = "<study>") -> StudySpec:
    """Validate already-loaded YAML data (a mapping) into a ``StudySpec``."""
    top = _mapping(data, source, "(top level)", _TOP_KEYS)
    name = _str(top.get("name"), source, "name", required=True)
    if not _NAME.match(name):
        raise StudySpecError(
            source, "name", f"{name!r} must be lowercase snake_case (a-z, 0-9, _), it names folders"
        )
    if top.get("cohort_sql") is not None and top.get("cohort_query") is not None:
        raise StudySpecError(
            source, "cohort_sql", "give either cohort_sql or cohort_query, not both"
        )
    label = _str(top.get("label"), source, "label")
    split = _split(top.get("split"), source)
    features = _features(top.get("features"), source)
    survival = _survival_list(top.get("survival"), source)
    if label is not None and not (features.radiomics or features.external):
        raise StudySpecError(
            source,
            "features",
            "a study with a label needs features.radiomics and/or features.external",
        )
    if label is None:
        for key in CLASSIFICATION_ONLY_KEYS:
            if key in top:
                raise StudySpecError(
                    source, key, "only allowed in a classification study (set label)"
                )
        if not survival:
            raise StudySpecError(
                source, "label", "a study needs a label (classification) and/or a survival list"
            )
    models = _models(top.get("models"), source) if label is not None else ()
    grids = _grids(top.get("grids"), source, models)
    bootstrap = _int(top.get("bootstrap", 1000), source, "bootstrap", minimum=0)
    cv_folds = _int(top.get("cv_folds", DEFAULT_CV_FOLDS), source, "cv_folds", minimum=2)
    drop = top.get("auc_drop_warning")
    return StudySpec(
        name=name,
        source=source,
        split=split,
        label=label,
        description=_str(top.get("description"), source, "description"),
        cohort_sql=_str(top.get("cohort_sql"), source, "cohort_sql"),
        cohort_query=_str(top.get("cohort_query"), source, "cohort_query"),
        features=features,
        case_rule=_case_rule(top.get("case_rule", "largest_roi"), source),
        selection=_selection(top.get("selection"), source),
        models=models,
        grids=grids,
        bootstrap=bootstrap,
        best_model=_best_model(top.get("best_model"), source),
        auc_drop_warning=None
        if drop is None
        else _float(drop, source, "auc_drop_warning", low=0.0, high=1.0),
        survival=survival,
        cv_folds=cv_folds,
        harmonization=_harmonization(top.get("harmonization"), source, label),
        validation=_validation(top.get("validation"), source),
        funding=tuple(_str_list(top.get("funding", []), source, "funding")),
        publications=tuple(
            _publication(p, source, f"publications[{i}]")
            for i, p in enumerate(_str_list(top.get("publications", []), source, "publications"))
        ),
        intended_use=_str(top.get("intended_use"), source, "intended_use"),
        limitations=tuple(_str_list(top.get("limitations", []), source, "limitations")),
    )


_DOI = re.compile(r"^10\.\d{4,9}/\S+$")


def _publication(value: str, source: str, key: str) -> str:
    """A DOI (lower-cased, without a https://doi.org/ prefix) or a PMID (digits)."""
    text = re.sub(r"^(https?://(dx\.)?doi\.org/|doi:\s*)", "", value.strip(), flags=re.IGNORECASE)
    if text.isdigit() or _DOI.match(text):
        return text.lower()
    raise StudySpecError(
        source, key, f"{value!r} is neither a DOI (10.xxxx/...) nor a PMID (digits)"
    )


def _split(value: Any, source: str) -> SplitSpec:
    allowed = {
        "development_centers": "list of center ids",
        "internal_validation_fraction": "number in [0, 1)",
        "external_validation_centers": "list of center ids",
        "seed": "integer",
    }
    if value is None:
        raise StudySpecError(source, "split", "is required: {development_centers: [C1], ...}")
    raw = _mapping(value, source, "split", allowed)
    development = _str_list(raw.get("development_centers"), source, "split.development_centers")
    if not development:
        raise StudySpecError(source, "split.development_centers", "needs at least one center id")
    external = _str_list(
        raw.get("external_validation_centers", []), source, "split.external_validation_centers"
    )
    overlap = sorted(set(development) & set(external))
    if overlap:
        raise StudySpecError(
            source,
            "split.external_validation_centers",
            f"center(s) {overlap} are also development centers; a center is one or the other",
        )
    fraction = _float(
        raw.get("internal_validation_fraction", 0.3),
        source,
        "split.internal_validation_fraction",
        low=0.0,
        high=1.0,
        high_open=True,
    )
    seed = _int(raw.get("seed", 42), source, "split.seed", minimum=0)
    return SplitSpec(tuple(development), fraction, tuple(external), seed)


def _features(value: Any, source: str) -> FeatureSpec:
    if value is None:
        return FeatureSpec()
    allowed = {
        "radiomics": "{params_id: <parameter file stem>}",
        "external": "{feature_set: <name>} or a list of them",
        "clinical": "list of clinical columns for the combined model",
        "categorical": "list of clinical columns to one-hot encode even if numeric",
    }
    raw = _mapping(value, source, "features", allowed)
    radiomics = None
    if raw.get("radiomics") is not None:
        rad = _mapping(raw["radiomics"], source, "features.radiomics", {"params_id": "string"})
        radiomics = RadiomicsFeatures(
            _str(rad.get("params_id"), source, "features.radiomics.params_id", required=True)
        )
    external: list[ExternalFeatures] = []
    ext = raw.get("external")
    if ext is not None:
        items = ext if isinstance(ext, list) else [ext]
        for i, item in enumerate(items):
            key = "features.external" + (f"[{i}]" if isinstance(ext, list) else "")
            entry = _mapping(item, source, key, {"feature_set": "string"})
            external.append(
                ExternalFeatures(
                    _str(entry.get("feature_set"), source, f"{key}.feature_set", required=True)
                )
            )
    clinical = _str_list(raw.get("clinical", []), source, "features.clinical")
    categorical = _str_list(raw.get("categorical", []), source, "features.categorical")
    stray = sorted(set(categorical) - set(clinical))
    if stray:
        raise StudySpecError(
            source, "features.categorical", f"{stray} are not in features.clinical {clinical}"
        )
    return FeatureSpec(radiomics, tuple(external), tuple(clinical), tuple(categorical))


def _selection(value: Any, source: str) -> SelectionSpec:
    if value is None:
        return SelectionSpec()
    allowed = {
        "variance_min": "number >= 0",
        "max_correlation": "number in (0, 1], or null to keep correlated features",
        "method": " | ".join(SELECTION_METHODS),
        "n_features": "integer >= 1",
        "lasso_c": "number > 0, or null for cross-validation",
        "min_icc": "number in [0, 1]: keep features whose ICC lower 95% bound reaches it",
    }
    raw = _mapping(value, source, "selection", allowed)
    method = _choice(raw.get("method", "lasso"), source, "selection.method", SELECTION_METHODS)
    corr = raw.get("max_correlation", 0.9)
    n_features = raw.get("n_features")
    lasso_c = raw.get("lasso_c")
    min_icc = raw.get("min_icc")
    return SelectionSpec(
        variance_min=_float(
            raw.get("variance_min", 0.0), source, "selection.variance_min", low=0.0
        ),
        max_correlation=None
        if corr is None
        else _float(corr, source, "selection.max_correlation", low=0.0, high=1.0, low_open=True),
        method=method,
        n_features=None
        if n_features is None
        else _int(n_features, source, "selection.n_features", minimum=1),
        lasso_c=None
        if lasso_c is None
        else _float(lasso_c, source, "selection.lasso_c", low=0.0, low_open=True),
        min_icc=None
        if min_icc is None
        else _float(min_icc, source, "selection.min_icc", low=0.0, high=1.0),
    )


def _models(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        return MODEL_NAMES
    names = _str_list(value, source, "models")
    if not names:
        raise StudySpecError(source, "models", f"needs at least one of {list(MODEL_NAMES)}")
    for i, name in enumerate(names):
        _choice(name, source, f"models[{i}]", MODEL_NAMES)
    if len(set(names)) != len(names):
        raise StudySpecError(source, "models", f"lists a model twice: {names}")
    return tuple(names)


def _grids(value: Any, source: str, models: tuple[str, ...]) -> dict[str, dict[str, list]]:
    if value is None:
        return {}
    raw = _mapping(value, source, "grids", {m: "{parameter: [values]}" for m in MODEL_NAMES})
    grids: dict[str, dict[str, list]] = {}
    for model, params in raw.items():
        if model not in models:
            raise StudySpecError(
                source, f"grids.{model}", f"{model} is not in models {list(models)}"
            )
        if not isinstance(params, dict) or not params:
            raise StudySpecError(
                source,
                f"grids.{model}",
                "expected a mapping {parameter: [values]}, e.g. {max_depth: [2, 3]}",
            )
        grid: dict[str, list] = {}
        for param, values in params.items():
            key = f"grids.{model}.{param}"
            if not isinstance(param, str) or not param.isidentifier():
                raise StudySpecError(source, key, "parameter names are identifiers, e.g. max_depth")
            values = values if isinstance(values, list) else [values]
            if not values or any(isinstance(v, dict | list) for v in values):
                raise StudySpecError(source, key, "expected a non-empty list of scalar values")
            grid[param] = values
        grids[model] = grid
    return grids


def _best_model(value: Any, source: str) -> BestModelRule:
    if value is None:
        return BestModelRule()
    allowed = {"metric": "auc", "cohort": "cv (the cross-validated training AUC)"}
    raw = _mapping(value, source, "best_model", allowed)
    cohort = raw.get("cohort", "cv")
    if cohort != "cv":
        raise StudySpecError(
            source,
            "best_model.cohort",
            f"{cohort!r} is not allowed: the best model is chosen on training only, by its "
            "cross-validated AUC (cohort: cv); choosing on a validation cohort reports that "
            "cohort's AUC with a winner's-curse bias, and the apparent training AUC rewards "
            "overfitting. Allowed: ['cv']",
        )
    metric = raw.get("metric", "auc")
    if metric != "auc":
        raise StudySpecError(
            source, "best_model.metric", f"{metric!r} is not allowed; cohort cv only has 'auc'"
        )
    return BestModelRule(metric, cohort)


def _harmonization(value: Any, source: str, label: str | None) -> HarmonizationSpec:
    if value is None:
        return HarmonizationSpec()
    allowed = {
        "method": " | ".join(HARMONIZATION_METHODS),
        "batch": f"center_id | an imaging_series field ({', '.join(IMAGING_BATCH_FIELDS)})",
        "covariates": "list of clinical columns to protect (never the label)",
        "external": " | ".join(HARMONIZATION_EXTERNAL),
        "compare_raw": "true to report the models without harmonization beside them",
    }
    raw = _mapping(value, source, "harmonization", allowed)
    method = _choice(
        raw.get("method", "combat"), source, "harmonization.method", HARMONIZATION_METHODS
    )
    batch = _choice(
        raw.get("batch", "center_id"),
        source,
        "harmonization.batch",
        ("center_id", *IMAGING_BATCH_FIELDS),
    )
    covariates = tuple(_str_list(raw.get("covariates", []), source, "harmonization.covariates"))
    if label is not None and label in covariates:
        raise StudySpecError(
            source,
            "harmonization.covariates",
            f"{label!r} is the study's label: the outcome is never a harmonization covariate "
            "(it would carry the labels into the features and cannot be known for new patients)",
        )
    if covariates and method != "combat":
        raise StudySpecError(
            source, "harmonization.covariates", f"covariates need method combat, not {method}"
        )
    compare_raw = raw.get("compare_raw", False)
    if not isinstance(compare_raw, bool):
        raise StudySpecError(source, "harmonization.compare_raw", "expected true or false")
    return HarmonizationSpec(
        method=method,
        batch=batch,
        covariates=covariates,
        external=_choice(
            raw.get("external", "refuse"),
            source,
            "harmonization.external",
            HARMONIZATION_EXTERNAL,
        ),
        compare_raw=compare_raw,
    )


def _validation(value: Any, source: str) -> ValidationSpec:
    if value is None:
        return ValidationSpec()
    allowed = {
        "nested_cv": "true (default) | false",
        "inner_cv_folds": "integer >= 2: folds of the tuning inside each outer fold (default 3)",
        "optimism_bootstrap": "integer >= 0: bootstrap resamples for Harrell's optimism correction",
        "recalibrate_external": "true | false (default)",
    }
    raw = _mapping(value, source, "validation", allowed)
    for key in ("nested_cv", "recalibrate_external"):
        if key in raw and not isinstance(raw[key], bool):
            raise StudySpecError(source, f"validation.{key}", "expected true or false")
    return ValidationSpec(
        nested_cv=raw.get("nested_cv", True),
        inner_cv_folds=_int(
            raw.get("inner_cv_folds", 3), source, "validation.inner_cv_folds", minimum=2
        ),
        optimism_bootstrap=_int(
            raw.get("optimism_bootstrap", 0), source, "validation.optimism_bootstrap", minimum=0
        ),
        recalibrate_external=raw.get("recalibrate_external", False),
    )


def _case_rule(value: Any, source: str) -> str:
    from assets.studies import case_rule

    rule = _str(value, source, "case_rule", required=True)
    try:
        kind, _ = case_rule.parse(rule)
    except ValueError:
        kind = None
    if kind is not None and kind != "per_lesion":
        return rule
    why = " (per_lesion gives several rows per patient; a model needs one)" if kind else ""
    raise StudySpecError(
        source, "case_rule", f"{rule!r} is not allowed{why}; allowed: {list(CASE_RULES)}"
    )


def _survival_list(value: Any, source: str) -> tuple[SurvivalSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise StudySpecError(
            source, "survival", f"expected a list of analyses, got {_typename(value)}"
        )
    return tuple(_survival(item, source, f"survival[{i}]") for i, item in enumerate(value))


def _survival(value: Any, source: str, key: str) -> SurvivalSpec:
    allowed = {
        "endpoint": "name of the endpoint, e.g. rfs",
        "time": "clinical column with the follow-up time",
        "event": "clinical column with the event indicator (0/1)",
        "groups": "column defining Kaplan-Meier groups (e.g. predicted_label)",
        "cox_terms": "list of covariates",
        "times": "list of time points, e.g. [36, 60]",
        "cutoff": "{method: maxstat | median, variable}",
        "reference_levels": "{term: reference level}",
        "agreement": "{score, readers: [...]}",
    }
    raw = _mapping(value, source, key, allowed)
    cutoff = None
    if raw.get("cutoff") is not None:
        cut = _mapping(
            raw["cutoff"],
            source,
            f"{key}.cutoff",
            {"method": " | ".join(CUTOFF_METHODS), "variable": "column"},
        )
        cutoff = CutoffSpec(
            _choice(cut.get("method"), source, f"{key}.cutoff.method", CUTOFF_METHODS),
            _str(cut.get("variable"), source, f"{key}.cutoff.variable", required=True),
        )
    agreement = None
    if raw.get("agreement") is not None:
        agr = _mapping(
            raw["agreement"],
            source,
            f"{key}.agreement",
            {"score": "column", "readers": "list of columns"},
        )
        readers = _str_list(agr.get("readers"), source, f"{key}.agreement.readers")
        if not readers:
            raise StudySpecError(
                source, f"{key}.agreement.readers", "needs at least one reader column"
            )
        agreement = AgreementSpec(
            _str(agr.get("score"), source, f"{key}.agreement.score", required=True), tuple(readers)
        )
    times_raw = raw.get("times", [])
    if not isinstance(times_raw, list):
        raise StudySpecError(
            source, f"{key}.times", f"expected a list of numbers, got {_typename(times_raw)}"
        )
    times = tuple(
        _float(t, source, f"{key}.times[{i}]", low=0.0, low_open=True)
        for i, t in enumerate(times_raw)
    )
    levels = raw.get("reference_levels", {}) or {}
    if not isinstance(levels, dict) or any(
        not isinstance(k, str) or isinstance(v, dict | list) for k, v in levels.items()
    ):
        raise StudySpecError(
            source,
            f"{key}.reference_levels",
            "expected a mapping {term: level}, e.g. {tumor_location: gastric}",
        )
    return SurvivalSpec(
        endpoint=_str(raw.get("endpoint"), source, f"{key}.endpoint", required=True),
        time=_str(raw.get("time"), source, f"{key}.time", required=True),
        event=_str(raw.get("event"), source, f"{key}.event", required=True),
        groups=_str(raw.get("groups"), source, f"{key}.groups"),
        cox_terms=tuple(_str_list(raw.get("cox_terms", []), source, f"{key}.cox_terms")),
        times=times,
        cutoff=cutoff,
        reference_levels=dict(levels),
        agreement=agreement,
    )


# typed readers ---------------------------------------------------------------------------
def _typename(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _mapping(value: Any, source: str, key: str, allowed: dict[str, str]) -> dict:
    if not isinstance(value, dict):
        raise StudySpecError(
            source, key, f"expected a mapping with keys {sorted(allowed)}, got {_typename(value)}"
        )
    for name in value:
        if name not in allowed:
            where = name if key == "(top level)" else f"{key}.{name}"
            hint = difflib.get_close_matches(str(name), list(allowed), n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            listing = "; ".join(f"{k}: {v}" for k, v in allowed.items())
            raise StudySpecError(source, str(where), f"unknown key{maybe}; allowed here: {listing}")
    return value


def _str(value: Any, source: str, key: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise StudySpecError(source, key, "is required (a string)")
        return None
    if not isinstance(value, str) or not value.strip():
        raise StudySpecError(
            source, key, f"expected a non-empty string, got {value!r} ({_typename(value)})"
        )
    return value.strip()


def _str_list(value: Any, source: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise StudySpecError(
            source, key, f"expected a list of strings, e.g. [C1], got {_typename(value)}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise StudySpecError(
                source,
                f"{key}[{i}]",
                f"expected a string, got {item!r} ({_typename(item)}); quote ids such as '01'",
            )
    return [v.strip() for v in value]


def _choice(value: Any, source: str, key: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        hint = difflib.get_close_matches(str(value), list(allowed), n=1)
        maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise StudySpecError(
            source, key, f"{value!r} is not allowed{maybe}; allowed: {list(allowed)}"
        )
    return value


def _int(value: Any, source: str, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudySpecError(
            source, key, f"expected an integer, got {value!r} ({_typename(value)})"
        )
    if minimum is not None and value < minimum:
        raise StudySpecError(source, key, f"must be >= {minimum}, got {value}")
    return value


def _float(
    value: Any,
    source: str,
    key: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StudySpecError(source, key, f"expected a number, got {value!r} ({_typename(value)})")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise StudySpecError(source, key, f"must be in {interval}, got {value:g}")
    return value
