"""Imaging: DICOM/NIfTI/NRRD series metadata, image/mask cases, image I/O and mask QC."""
