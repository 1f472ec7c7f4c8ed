-- Projects and amount by institution (as written; 'unknown' when empty), with its region, its
-- shares within each source and currency, and its rank by projects then amount.
with source_grants as (
    select
        source,
        currency,
        coalesce(institution, 'unknown') as institution,
        region,
        amount
    from grants
),

per_institution as (
    select
        source,
        currency,
        institution,
        any_value(region) as region,
        count(*) as n_projects,
        sum(amount) as amount
    from source_grants
    group by source, currency, institution
),

final as (
    select
        source,
        currency,
        institution,
        region,
        n_projects,
        amount,
        n_projects / sum(n_projects) over by_source as share_projects,
        amount / sum(amount) over by_source as share_amount,
        rank() over (
            partition by source, currency order by n_projects desc, amount desc nulls last
        ) as institution_rank
    from per_institution
    window by_source as (partition by source, currency)
)

select * from final
order by source, currency, institution_rank, institution
