"""3D CT (Merlin's method): CT volumes with EHR diagnosis codes and radiology reports."""
from pipelines.domain import Domain

DOMAIN = Domain(
    name="ct",
    description="CT volumes paired with radiology reports, with EHR diagnosis codes mapped to phecode phenotypes.",
    modality="volume",
)
