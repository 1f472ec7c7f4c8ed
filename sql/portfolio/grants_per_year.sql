-- Projects and amount per start year with year-on-year growth, one row per source, currency, year.
-- start_year is the NSFC approval year or the first NIH fiscal year; amount is in whole currency
-- units (CNY for NSFC, USD for NIH), never summed across currencies. Growth compares with the
-- previous calendar year of the same source (null when that year has no projects); grants with
-- an unknown start year form the row with a null year.
with source_grants as (
    select
        source,
        currency,
        start_year as year,
        amount
    from grants
),

per_year as (
    select
        source,
        currency,
        year,
        count(*) as n_projects,
        sum(amount) as amount
    from source_grants
    group by all
),

with_previous as (
    select
        *,
        lag(year) over by_source as previous_year,
        lag(n_projects) over by_source as previous_n_projects,
        lag(amount) over by_source as previous_amount
    from per_year
    window by_source as (partition by source, currency order by year nulls last)
),

final as (
    select
        source,
        currency,
        year,
        n_projects,
        amount,
        case
            when previous_year = year - 1 then n_projects / previous_n_projects - 1
        end as n_projects_growth,
        case
            when previous_year = year - 1 and previous_amount > 0 then amount / previous_amount - 1
        end as amount_growth
    from with_previous
)

select * from final
order by source, currency, year nulls last
