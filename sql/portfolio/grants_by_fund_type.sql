-- Projects and amount by fund type (English category from assets/portfolio/fund_types.yaml) and
-- their shares within each source and currency; fund_types_original lists the texts mapped to it.
-- A grant with an empty fund type counts as 'unknown'.
with source_grants as (
    select
        source,
        currency,
        coalesce(fund_type, 'unknown') as fund_type,
        fund_type_original,
        amount
    from grants
),

per_fund_type as (
    select
        source,
        currency,
        fund_type,
        count(*) as n_projects,
        sum(amount) as amount,
        list(distinct fund_type_original) filter (where fund_type_original is not null)
            as fund_types_original
    from source_grants
    group by source, currency, fund_type
),

final as (
    select
        source,
        currency,
        fund_type,
        n_projects,
        amount,
        n_projects / sum(n_projects) over by_source as share_projects,
        amount / sum(amount) over by_source as share_amount,
        list_sort(fund_types_original) as fund_types_original
    from per_fund_type
    window by_source as (partition by source, currency)
)

select * from final
order by source, currency, n_projects desc, fund_type
