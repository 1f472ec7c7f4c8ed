-- One row per case and radiomics parameter set, every feature in one MAP column:
--   select case_id, features['original_shape_VoxelVolume'] from radiomics_features_by_case
-- A view cannot PIVOT on feature names it reads from the data (DuckDB needs a fixed IN list in a
-- view), so this is the view-friendly wide form; assets/clinical/pivot.py makes real columns.
with source as (
    select
        case_id,
        patient_key,
        center_id,
        params_id,
        feature,
        value
    from radiomics_features
),

final as (
    select
        case_id,
        patient_key,
        center_id,
        params_id,
        count(*) as n_features,
        map_from_entries(list((feature, value) order by feature)) as features
    from source
    group by all
)

select * from final
