-- Projects and amount by discipline group and area (disease area): NSFC application codes grouped
-- on their first three characters (H18 = imaging medicine, H16 = oncology ...), NIH on the
-- institute code of the core project number (CA = cancer), named by
-- assets/portfolio/disciplines.yaml. discipline_codes lists the full codes seen in the group.
with source_grants as (
    select
        source,
        currency,
        coalesce(discipline_group, 'unknown') as discipline_group,
        discipline_area,
        discipline_code,
        amount
    from grants
),

per_discipline as (
    select
        source,
        currency,
        discipline_group,
        any_value(discipline_area) as discipline_area,
        count(*) as n_projects,
        sum(amount) as amount,
        list(distinct discipline_code) filter (where discipline_code is not null)
            as discipline_codes
    from source_grants
    group by source, currency, discipline_group
),

final as (
    select
        source,
        currency,
        discipline_group,
        discipline_area,
        n_projects,
        amount,
        n_projects / sum(n_projects) over by_source as share_projects,
        amount / sum(amount) over by_source as share_amount,
        list_sort(discipline_codes) as discipline_codes
    from per_discipline
    window by_source as (partition by source, currency)
)

select * from final
order by source, currency, n_projects desc, discipline_group
