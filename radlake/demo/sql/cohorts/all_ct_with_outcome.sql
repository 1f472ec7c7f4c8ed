-- Every patient with at least one segmented CT (any phase) and a known overall-survival outcome
-- (os_months and os_event both filled in). One row per patient: the clinical columns plus the
-- number of CT cases and the phases they come in.
with ct_cases as (
    select
        cases.patient_key,
        count(distinct cases.case_id) as n_ct_cases,
        string_agg(distinct coalesce(cases.phase, imaging_series.phase, 'unknown'), ', '
            order by coalesce(cases.phase, imaging_series.phase, 'unknown')) as phases
    from cases
    inner join imaging_series on cases.series_id = imaging_series.series_id
    where imaging_series.modality = 'CT'
    group by all
),

with_outcome as (
    select * exclude (source_file, loaded_at)
    from clinical
    where os_months is not null and os_event is not null
),

final as (
    select
        with_outcome.*,
        ct_cases.n_ct_cases,
        ct_cases.phases
    from with_outcome
    inner join ct_cases on with_outcome.patient_key = ct_cases.patient_key
)

select * from final
order by center_id, patient_key
