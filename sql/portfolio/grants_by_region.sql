-- Projects and amount by region (province for NSFC via assets/portfolio/regions.yaml, state for
-- NIH), shares within each source and currency, and the share of the top three regions.
-- Regions are ranked by projects, then amount, then name; 'unknown' (no region) is never ranked
-- but stays in the denominators, so top3_share_projects is "top three regions / all projects".
with source_grants as (
    select
        source,
        currency,
        coalesce(region, 'unknown') as region,
        region is null as is_unknown,
        amount
    from grants
),

per_region as (
    select
        source,
        currency,
        region,
        is_unknown,
        count(*) as n_projects,
        sum(amount) as amount
    from source_grants
    group by source, currency, region, is_unknown
),

ranked as (
    select
        *,
        case
            when not is_unknown then row_number() over (
                partition by source, currency, is_unknown
                order by n_projects desc, amount desc nulls last, region
            )
        end as region_rank
    from per_region
),

final as (
    select
        source,
        currency,
        region,
        region_rank,
        coalesce(region_rank <= 3, false) as is_top3,
        n_projects,
        amount,
        n_projects / sum(n_projects) over by_source as share_projects,
        amount / sum(amount) over by_source as share_amount,
        sum(case when region_rank <= 3 then n_projects else 0 end) over by_source
            / sum(n_projects) over by_source as top3_share_projects,
        sum(case when region_rank <= 3 then amount else 0 end) over by_source
            / sum(amount) over by_source as top3_share_amount
    from ranked
    window by_source as (partition by source, currency)
)

select * from final
order by source, currency, region_rank nulls last
