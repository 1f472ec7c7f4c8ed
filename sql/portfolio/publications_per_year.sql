-- Papers per publication year (merged publications: a paper found in several files counts once).
with source_publications as (
    select pub_id, year from publications
),

final as (
    select
        year,
        count(*) as n_papers,
        count(*) / sum(count(*)) over () as share_papers
    from source_publications
    group by year
)

select * from final
order by year nulls last
