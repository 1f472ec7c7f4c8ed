-- Papers per journal (full journal name as the best source wrote it), with their year span.
with source_publications as (
    select pub_id, coalesce(journal, 'unknown') as journal, year from publications
),

final as (
    select
        journal,
        count(*) as n_papers,
        count(*) / sum(count(*)) over () as share_papers,
        min(year) as first_year,
        max(year) as last_year
    from source_publications
    group by journal
)

select * from final
order by n_papers desc, journal
