-- Model history: per study, model, cohort and metric, the latest model version's value next to
-- the previous version's value and the difference (latest - previous). Versions are ordered by
-- model_versions.trained_at (ties by version id); a study with one version has no previous value.
-- A metric only one of the two versions has still shows, with the other side empty.
with versions as (
    select
        study,
        model_version,
        min(trained_at) as trained_at
    from model_versions
    group by all
),

ranked as (
    select
        study,
        model_version,
        trained_at,
        row_number() over (
            partition by study order by trained_at desc, model_version desc
        ) as recency
    from versions
),

metrics as (
    select
        model_metrics.study,
        model_metrics.model_version,
        ranked.trained_at,
        ranked.recency,
        model_metrics.model,
        model_metrics.cohort,
        model_metrics.metric,
        model_metrics.value
    from model_metrics
    inner join ranked
        on model_metrics.study = ranked.study
        and model_metrics.model_version = ranked.model_version
    where ranked.recency <= 2
),

latest as (
    select * from metrics where recency = 1
),

previous as (
    select * from metrics where recency = 2
),

final as (
    select
        coalesce(latest.study, previous.study) as study,
        coalesce(latest.model, previous.model) as model,
        coalesce(latest.cohort, previous.cohort) as cohort,
        coalesce(latest.metric, previous.metric) as metric,
        latest_version.model_version as latest_version,
        latest_version.trained_at as latest_trained_at,
        latest.value as latest_value,
        previous_version.model_version as previous_version,
        previous_version.trained_at as previous_trained_at,
        previous.value as previous_value,
        latest.value - previous.value as difference
    from latest
    full join previous
        on latest.study = previous.study
        and latest.model = previous.model
        and latest.cohort = previous.cohort
        and latest.metric = previous.metric
    left join ranked as latest_version
        on coalesce(latest.study, previous.study) = latest_version.study
        and latest_version.recency = 1
    left join ranked as previous_version
        on coalesce(latest.study, previous.study) = previous_version.study
        and previous_version.recency = 2
)

select * from final
order by study, model, cohort, metric
