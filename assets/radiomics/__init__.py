"""Radiomics: pyradiomics parameter files, incremental parallel feature extraction."""
