-- Papers per author name as written ("Zaiyi LIU" in the group's export and "Liu, Zaiyi" in PubMed
-- are different names here), with first- and last-author counts and the year span.
with source_authors as (
    select pub_id, position, name from publication_authors
),

author_counts as (
    select pub_id, max(position) as n_authors from source_authors group by pub_id
),

source_publications as (
    select pub_id, year from publications
),

final as (
    select
        source_authors.name,
        count(distinct source_authors.pub_id) as n_papers,
        count(distinct source_authors.pub_id) filter (where source_authors.position = 1)
            as n_first_author,
        count(distinct source_authors.pub_id) filter (
            where source_authors.position = author_counts.n_authors
        ) as n_last_author,
        min(source_publications.year) as first_year,
        max(source_publications.year) as last_year
    from source_authors
    inner join author_counts using (pub_id)
    left join source_publications using (pub_id)
    group by source_authors.name
)

select * from final
order by n_papers desc, name
