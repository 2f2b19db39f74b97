"""3D CT (Merlin's method): CT volumes with EHR diagnosis codes and radiology reports."""
from __future__ import annotations

from domains.ct.curate import curate_command
from domains.ct.demo_data import FINDINGS, write_demo_data
from domains.ct.evaluate import evaluate_command
from domains.ct.export import export_command
from domains.ct.train import train_command
from pipelines.domain import Domain

DOMAIN = Domain(
    name="ct",
    # Zero-shot findings (Merlin's positive-vs-negative prompt comparison); prompts live in
    # domains/ct/evaluate.py and can be overridden with ct.evaluate.prompts.
    classnames=FINDINGS,
    templates=(),
    curate_command=curate_command,
    write_demo_data=write_demo_data,
    modality="volume",
    description="CT volumes paired with radiology reports, with EHR diagnosis codes mapped to phecode phenotypes.",
    train_command=train_command,
    evaluate_command=evaluate_command,
    export_command=export_command,
    card_notes={
        "sources": ("NIfTI volumes or DICOM series, an EHR code table and a report table given to `domainfm curate ct`",),
        "licences": ("The licences and data-use agreements of the imaging and EHR data you curate; PheWAS phecode maps are GPL-3 and read by path only",),
        "limitations": ("Phenotype labels come from billing codes in a time window: they are noisy and incomplete.",),
    },
)
