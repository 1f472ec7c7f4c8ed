-- Every patient with at least one image/mask case and a clinical row: the starting cohort of an
-- imaging study on any lake (contract columns only). One row per patient: center, number of cases
-- and series, and the modalities they come in.
with imaged as (
    select
        cases.patient_key,
        count(distinct cases.case_id) as n_cases,
        count(distinct cases.series_id) as n_series,
        string_agg(distinct coalesce(imaging_series.modality, 'unknown'), ', '
            order by coalesce(imaging_series.modality, 'unknown')) as modalities
    from cases
    left join imaging_series on cases.series_id = imaging_series.series_id
    group by all
),

final as (
    select
        clinical.patient_key,
        clinical.center_id,
        imaged.n_cases,
        imaged.n_series,
        imaged.modalities
    from clinical
    inner join imaged on clinical.patient_key = imaged.patient_key
)

select * from final
order by center_id, patient_key
