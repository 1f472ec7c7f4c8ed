"""Studies: study YAML -> split, feature pipeline, models, metrics, survival, figures, report."""
