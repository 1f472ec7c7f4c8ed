-- The grant and data snapshot behind each paper that reports a study (study YAML publications:):
-- the study, the grants that fund it and those the paper cites, and the study's latest model
-- version (its data and code versions and when it was trained) with its patients and centers.
with reported as (
    select study_references.study, study_references.reference, publications.*
    from study_references
    left join publications
        on study_references.reference = lower(publications.doi)
        or study_references.reference = publications.pmid
    where study_references.kind = 'publication'
),

funding as (
    select study, string_agg(reference, ', ' order by reference) as study_grants
    from study_references
    where kind = 'grant'
    group by all
),

cited as (
    select pub_id, string_agg(distinct grant_id, ', ' order by grant_id) as cited_grants
    from publication_grants
    where linked and grant_id is not null
    group by all
),

latest as (
    select study, model_version, data_version, code_version, trained_at
    from model_versions
    qualify row_number() over (partition by study order by trained_at desc) = 1
),

cohort as (
    select study, count(distinct patient_key) as patients, count(distinct center_id) as n_centers
    from study_splits
    group by all
),

final as (
    select
        reported.reference,
        reported.pub_id,
        reported.pub_id is not null as in_lake,
        reported.title,
        reported.journal,
        reported.year,
        reported.doi,
        reported.pmid,
        reported.study,
        funding.study_grants,
        cited.cited_grants,
        latest.model_version,
        latest.data_version,
        latest.code_version,
        latest.trained_at,
        cohort.patients,
        cohort.n_centers
    from reported
    left join funding on reported.study = funding.study
    left join cited on reported.pub_id = cited.pub_id
    left join latest on reported.study = latest.study
    left join cohort on reported.study = cohort.study
)

select * from final
order by study, year, reference
