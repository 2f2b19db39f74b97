"""DICOM headers: the attributes that may reach an output (an allow-list), and the ones that identify.

Curation reads DICOM headers for geometry and pixels; no header is copied out. What a curated output
keeps of a header is `allowed_attributes(ds)`: ALLOWED only, technical values with no person, place or
time in them. `identifying_values(ds)` collects the values of the attributes the DICOM PS3.15 Basic
Application Level Confidentiality Profile removes or replaces that name the patient, the staff, the
institution, the device or the study (IDENTIFYING): curation does not write them, and uses them as
known identifiers of the record, so the same strings are also removed from the report text.

Nothing in this project writes DICOM (curated volumes are float32 `npy` tensors in tar shards), so the
Basic Profile itself is not applied anywhere; tests/test_deid_corpus.py checks that a curated output
holds no DICOM file (`is_dicom`). A stage that writes DICOM back would have to apply the profile with a
maintained tool (pydicom's or the `deid` package's) first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

# Technical attributes a curated output may record (values are numbers or short code strings).
ALLOWED = ("Modality", "BodyPartExamined", "ConvolutionKernel", "SliceThickness", "PixelSpacing", "SpacingBetweenSlices", "KVP",
           "Rows", "Columns", "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept")
# Attributes that identify the patient, staff, institution, device or study (from the PS3.15 Basic Profile's table).
IDENTIFYING = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers", "PatientBirthDate", "PatientBirthTime",
    "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "RegionOfResidence", "CountryOfResidence", "ResponsiblePerson",
    "ResponsibleOrganization", "AccessionNumber", "StudyID", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "RequestingPhysician", "PhysiciansOfRecord", "ScheduledPerformingPhysicianName", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "DetectorID", "PlateID", "PersonName",
    "RequestedProcedureID", "PerformedProcedureStepID", "ScheduledProcedureStepID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "AdmissionID", "ServiceEpisodeID", "PatientInsurancePlanCodeSequence",
)
PERSON_VR = "PN"


def _plain(value: Any) -> Any:
    """A header value as JSON: numbers, strings, lists of them."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, (int, float, str)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def allowed_attributes(ds: Any) -> dict[str, Any]:
    """The ALLOWED attributes present in a pydicom Dataset, as JSON values; nothing else of the header."""
    kept: dict[str, Any] = {}
    for name in ALLOWED:
        value = ds.get(name) if ds is not None else None
        if value not in (None, ""):
            kept[name] = _plain(value)
    return kept


def identifying_values(ds: Any) -> tuple[list[str], list[str]]:
    """(values, person names) of the IDENTIFYING attributes present in a Dataset (person names also listed in values)."""
    values: list[str] = []
    names: list[str] = []
    if ds is None:
        return values, names
    for name in IDENTIFYING:
        element = ds.data_element(name) if name in ds else None
        if element is None or element.value in (None, ""):
            continue
        items = element.value if element.VM > 1 and not isinstance(element.value, (str, bytes)) else [element.value]
        for item in items:
            if element.VR == "SQ":
                continue
            text = str(item).strip()
            if not text:
                continue
            values.append(text)
            if element.VR == PERSON_VR:
                names.append(text)
    return values, names


def is_dicom(data_or_path: Union[bytes, Path, str]) -> bool:
    """Whether bytes (or a file) carry the DICOM Part 10 preamble ('DICM' at byte 128)."""
    if isinstance(data_or_path, (str, Path)):
        with open(data_or_path, "rb") as f:
            head = f.read(132)
    else:
        head = data_or_path[:132]
    return len(head) == 132 and head[128:] == b"DICM"
