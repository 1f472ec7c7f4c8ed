-- The headline numbers of a funding-landscape analysis, one row per source and currency:
-- projects, total amount, year span, share of general + young-scientist programmes, share of the
-- three regions with most projects (unknown region not ranked), share of imaging-related projects.
-- The per-dimension detail is in grants_per_year, grants_by_fund_type, grants_by_region,
-- grants_imaging_share.
with source_grants as (
    select * from grants
),

per_region as (
    select
        source,
        currency,
        region,
        count(*) as n_projects,
        sum(amount) as amount
    from source_grants
    where region is not null
    group by all
),

ranked_regions as (
    select
        *,
        row_number() over (
            partition by source, currency order by n_projects desc, amount desc nulls last, region
        ) as region_rank
    from per_region
),

top_regions as (
    select
        source,
        currency,
        sum(n_projects) as n_top3,
        list(region order by region_rank) as top3_regions
    from ranked_regions
    where region_rank <= 3
    group by source, currency
),

totals as (
    select
        source,
        currency,
        count(*) as n_projects,
        sum(amount) as amount,
        min(start_year) as first_year,
        max(start_year) as last_year,
        count(*) filter (where fund_type in ('general', 'young_scientist')) as n_general_or_young,
        count(*) filter (where is_imaging) as n_imaging
    from source_grants
    group by source, currency
),

final as (
    select
        totals.source,
        totals.currency,
        totals.n_projects,
        totals.amount,
        totals.first_year,
        totals.last_year,
        totals.n_general_or_young / totals.n_projects as general_or_young_share,
        coalesce(top_regions.n_top3, 0) / totals.n_projects as top3_region_share,
        top_regions.top3_regions,
        totals.n_imaging / totals.n_projects as imaging_share
    from totals
    left join top_regions using (source, currency)
)

select * from final
order by source, currency
