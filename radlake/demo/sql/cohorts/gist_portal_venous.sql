-- The GIST demo cohort: patients with a segmented portal-venous CT and at least 12 months of
-- follow-up (relapse-free or overall) or an event before that. One row per patient: the clinical
-- columns, the follow-up used for the rule, and how many portal-venous CT cases the patient has.
-- The phase is the case's own (cases.phase, from cases.csv) or else its series' (from DICOM).
with portal_venous_cases as (
    select
        cases.patient_key,
        count(distinct cases.case_id) as n_portal_venous_cases,
        count(distinct cases.series_id) as n_portal_venous_series
    from cases
    inner join imaging_series on cases.series_id = imaging_series.series_id
    where imaging_series.modality = 'CT'
        and coalesce(cases.phase, imaging_series.phase) = 'portal_venous'
    group by all
),

outcomes as (
    select
        * exclude (source_file, loaded_at),
        greatest(rfs_months, os_months) as follow_up_months,
        coalesce(rfs_event = 1 or os_event = 1, false) as had_event
    from clinical
),

final as (
    select
        outcomes.*,
        portal_venous_cases.n_portal_venous_cases,
        portal_venous_cases.n_portal_venous_series
    from outcomes
    inner join portal_venous_cases on outcomes.patient_key = portal_venous_cases.patient_key
    where outcomes.follow_up_months >= 12 or outcomes.had_event
)

select * from final
order by center_id, patient_key
