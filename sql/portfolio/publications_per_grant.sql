-- Papers per grant: every grant id that a paper references (PubMed GrantList, MEDLINE GR, grant
-- numbers in the text), with the grant's details when it is in the grants table (linked) and the
-- papers' year span. Unlinked ids are kept: the grant is cited but not (yet) landed. References
-- whose number cannot be read (match_rule 'unreadable', e.g. a bare "1R01") are left out.
with source_links as (
    select pub_id, grant_id, agency_kind, linked
    from publication_grants
    where match_rule <> 'unreadable'
),

source_grants as (
    select grant_id, source, title, pi, institution, start_year, amount, currency from grants
),

source_publications as (
    select pub_id, year from publications
),

per_grant as (
    select
        source_links.grant_id,
        any_value(source_links.agency_kind) as agency_kind,
        bool_or(source_links.linked) as linked,
        count(distinct source_links.pub_id) as n_papers,
        min(source_publications.year) as first_paper_year,
        max(source_publications.year) as last_paper_year
    from source_links
    left join source_publications using (pub_id)
    group by source_links.grant_id
),

final as (
    select
        per_grant.grant_id,
        source_grants.source,
        per_grant.agency_kind,
        per_grant.linked,
        source_grants.title,
        source_grants.pi,
        source_grants.institution,
        source_grants.start_year,
        source_grants.amount,
        source_grants.currency,
        per_grant.n_papers,
        per_grant.first_paper_year,
        per_grant.last_paper_year
    from per_grant
    left join source_grants using (grant_id)
)

select * from final
order by n_papers desc, grant_id
