-- The dataset table of a paper: series, cases and patients per center, modality, manufacturer and
-- slice thickness (rounded to 0.01 mm: 1.25 mm stays 1.25), with the slice counts and the acquisition period.
-- A case counts where its image series is; cases without a series_id are not counted here.
with series as (
    select
        series_id,
        patient_key,
        center_id,
        coalesce(modality, 'unknown') as modality,
        coalesce(nullif(trim(manufacturer), ''), 'unknown') as manufacturer,
        round(slice_thickness_mm, 2) as slice_thickness_mm,
        n_slices,
        acquired_on
    from imaging_series
),

cases_per_series as (
    select
        series_id,
        count(*) as n_cases
    from cases
    where series_id is not null
    group by all
),

final as (
    select
        series.center_id,
        series.modality,
        series.manufacturer,
        series.slice_thickness_mm,
        count(distinct series.patient_key) as n_patients,
        count(*) as n_series,
        coalesce(sum(cases_per_series.n_cases), 0)::bigint as n_cases,
        median(series.n_slices) as median_slices,
        min(series.acquired_on) as first_acquired_on,
        max(series.acquired_on) as last_acquired_on
    from series
    left join cases_per_series on series.series_id = cases_per_series.series_id
    group by all
)

select * from final
order by center_id, modality, manufacturer, slice_thickness_mm
