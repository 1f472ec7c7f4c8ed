-- Outputs per grant: the studies it funds (study YAML funding:, table study_references), their
-- model versions, patients and centers, and its papers: those reporting a funded study (study YAML
-- publications:) and those citing the grant (publication_grants: PubMed GrantList, MEDLINE GR,
-- grant numbers in the text). One row per grant with any output; in_lake says whether the grant
-- itself is in the grants table.
with funded as (
    select reference as grant_id, study
    from study_references
    where kind = 'grant'
),

study_papers as (
    select study_references.study, publications.pub_id
    from study_references
    inner join publications
        on study_references.reference = lower(publications.doi)
        or study_references.reference = publications.pmid
    where study_references.kind = 'publication'
),

papers as (
    select funded.grant_id, study_papers.pub_id, 'reports a funded study' as via
    from funded
    inner join study_papers on funded.study = study_papers.study
    union
    select grant_id, pub_id, 'cites the grant' as via
    from publication_grants
    where linked and grant_id is not null
),

studies as (
    select
        funded.grant_id,
        count(distinct funded.study) as n_studies,
        string_agg(distinct funded.study, ', ' order by funded.study) as studies,
        count(distinct study_splits.patient_key) as patients,
        count(distinct study_splits.center_id) as n_centers,
        string_agg(distinct study_splits.center_id, ', ' order by study_splits.center_id) as centers
    from funded
    left join study_splits on funded.study = study_splits.study
    group by all
),

versions as (
    select
        funded.grant_id,
        count(distinct model_versions.model_version) as model_versions,
        max(model_versions.trained_at) as last_trained_at
    from funded
    inner join model_versions on funded.study = model_versions.study
    group by all
),

paper_counts as (
    select
        grant_id,
        count(distinct pub_id) as papers,
        count(distinct pub_id) filter (where via = 'reports a funded study') as papers_reporting_studies,
        count(distinct pub_id) filter (where via = 'cites the grant') as papers_citing_grant
    from papers
    group by all
),

with_output as (
    select grant_id from studies
    union
    select grant_id from paper_counts
),

final as (
    select
        with_output.grant_id,
        grants.grant_id is not null as in_lake,
        grants.source,
        grants.title,
        grants.pi,
        grants.institution,
        grants.amount,
        grants.currency,
        grants.start_year,
        coalesce(studies.n_studies, 0) as n_studies,
        studies.studies,
        coalesce(versions.model_versions, 0) as model_versions,
        versions.last_trained_at,
        coalesce(paper_counts.papers, 0) as papers,
        coalesce(paper_counts.papers_reporting_studies, 0) as papers_reporting_studies,
        coalesce(paper_counts.papers_citing_grant, 0) as papers_citing_grant,
        coalesce(studies.patients, 0) as patients,
        coalesce(studies.n_centers, 0) as n_centers,
        studies.centers
    from with_output
    left join grants on with_output.grant_id = grants.grant_id
    left join studies on with_output.grant_id = studies.grant_id
    left join versions on with_output.grant_id = versions.grant_id
    left join paper_counts on with_output.grant_id = paper_counts.grant_id
)

select * from final
order by n_studies desc, papers desc, grant_id
