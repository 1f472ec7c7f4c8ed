"""Great Expectations suites (one YAML file per lake table) and the blocking asset-check factory."""
