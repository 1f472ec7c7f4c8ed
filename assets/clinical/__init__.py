"""Clinical outcomes, feature tables computed elsewhere, the shared feature pivot."""
