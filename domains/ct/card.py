"""Model-card facts for CT."""
from __future__ import annotations

SOURCES = ("NIfTI volumes or DICOM series, an EHR code table and a report table given to `domainfm curate ct`",)
LICENCES = (
    "The licences and data-use agreements of the imaging and EHR data you curate; "
    "PheWAS phecode maps are GPL-3 and read by path only",
)
LIMITATIONS = ("Phenotype labels come from billing codes in a time window: they are noisy and incomplete.",)
