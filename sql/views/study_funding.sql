-- Funding per study (study YAML funding:): the grants, how many are in the lake, and their amount
-- per currency (amounts are never added across currencies).
with funded as (
    select study_references.study, study_references.reference as grant_id, grants.amount, grants.currency
    from study_references
    left join grants on study_references.reference = grants.grant_id
    where study_references.kind = 'grant'
),

final as (
    select
        study,
        currency,
        count(*) as n_grants,
        count(amount) as n_with_amount,
        sum(amount) as amount,
        string_agg(grant_id, ', ' order by grant_id) as grants
    from funded
    group by all
)

select * from final
order by study, currency
