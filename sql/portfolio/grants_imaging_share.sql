-- Share of imaging-related projects per source and currency. grants.is_imaging is true when the
-- title or a keyword holds a term of assets/portfolio/imaging_keywords.yaml (Chinese substrings
-- such as 影像 / 成像 / 超声 / 磁共振, English words such as imaging / radiomics / ultrasound,
-- case-sensitive acronyms such as CT / MRI / PET); grants.imaging_terms says which ones.
with source_grants as (
    select
        source,
        currency,
        coalesce(is_imaging, false) as is_imaging,
        amount
    from grants
),

final as (
    select
        source,
        currency,
        count(*) as n_projects,
        count(*) filter (where is_imaging) as n_imaging,
        count(*) filter (where is_imaging) / count(*) as imaging_share,
        sum(amount) as amount,
        coalesce(sum(amount) filter (where is_imaging), 0) as amount_imaging,
        coalesce(sum(amount) filter (where is_imaging), 0) / sum(amount) as imaging_amount_share
    from source_grants
    group by source, currency
)

select * from final
order by source, currency
