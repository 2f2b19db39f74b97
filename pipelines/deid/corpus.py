"""A planted-identifier corpus: synthetic PHI of all 18 HIPAA Safe Harbor categories, and clinical phrases that must survive.

Nothing here is a real person. The texts are what curation reads (a whole CT report, findings and
impression columns, a lecture transcript, a slide caption); `PLANTED` lists each identifier as
written, its Safe Harbor category and the input field it is planted in (free text, or structured
fields: EHR ids and dates, study ids, file names, DICOM header attributes, slide ids). A curated
output is clean when no planted string occurs anywhere in it, compared case-insensitively
(`pipelines.deid.audit.find_leaks`). `CLINICAL` lists phrases of the same texts that must come out
unchanged. tests/test_deid_corpus.py builds CT and pathology inputs from this module and audits every
file curation writes; `python -m pipelines.deid.compare` scores de-identification engines on the texts.
"""
from __future__ import annotations

from dataclasses import dataclass

# The 18 Safe Harbor categories (45 CFR 164.514(b)(2)(i)), by short key.
CATEGORIES = {
    "name": "(A) names",
    "geographic": "(B) geographic subdivisions smaller than a state",
    "date": "(C) dates (except year) and ages over 89",
    "phone": "(D) telephone numbers",
    "fax": "(E) fax numbers",
    "email": "(F) e-mail addresses",
    "ssn": "(G) social security numbers",
    "mrn": "(H) medical record numbers",
    "health_plan": "(I) health plan beneficiary numbers",
    "account": "(J) account numbers",
    "license": "(K) certificate/licence numbers",
    "vehicle": "(L) vehicle identifiers and licence plates",
    "device": "(M) device identifiers and serial numbers",
    "url": "(N) web URLs",
    "ip": "(O) IP addresses",
    "biometric": "(P) biometric identifiers",
    "photo": "(Q) full-face photographs and comparable images",
    "other_id": "(R) any other unique identifying number or code",
}

STUDY_DICOM = "A7730451"  # accession number: the DICOM series folder's name and its AccessionNumber
STUDY_NIFTI = "RAD21-0077812"  # accession-like study id: a NIfTI file's name
STUDY_NAMED = "Okafor_Grace_CT"  # a NIfTI file named after the patient
PATIENT_DICOM, PATIENT_NIFTI, PATIENT_NAMED = "00482913", "MRN-5550172", "88231907"
STUDY_DATE = "2021-03-03"
TCGA_SLIDE = "TCGA-A7-A0CE-01Z-00-DX1"

# A whole report (the `report` column) with the header a RIS export carries.
REPORT = """PATIENT: QUINCE, BARTHOLOMEW    MRN: 00482913    DOB: 03/03/1931 (age 90)
ACCESSION: A7730451    EXAM DATE: March 3, 2021
Address: 1423 Larkspur Lane, Springfield, IL 62704. Phone: (217) 555-0143. Fax: 217-555-0199.
Email: bquince@example.org. SSN: 123-45-6789. Health plan ID: HPX-4471-0923. Account #: 77812-330.
Driver license: D1234-56789-01234. License plate 7ABC123. Pacemaker serial SN-88321-XK.
Portal: https://portal.larkspur-example.org/chart/88213 . Workstation IP 10.21.4.77.
Fingerprint ID: FP-0042291. Photo: IMG_QUINCE_0303.jpg
CLINICAL INFORMATION: 90-year-old man with Crohn disease and prior Hodgkin lymphoma. Abdominal pain.
COMPARISON: CT of 3/3/21 and 2/14/2020.
TECHNIQUE: CT abdomen and pelvis with contrast.
FINDINGS:
Liver: Normal size, no focal lesion. Spleen: Enlarged, measuring 15 cm. Kidneys: A 4 mm calculus in the right kidney.
Peritoneum: Small fluid in Morison pouch and in the pouch of Douglas. Bowel: Wall thickening of the terminal ileum.
Adrenals: Bosniak 2 cyst of the left kidney, 2.3 x 1.5 cm, -20 HU.
IMPRESSION: Splenomegaly. Terminal ileitis in keeping with Crohn disease. History of Parkinson disease noted.
Read by Okonkwo. Results discussed with Ms. Abernathy on 3/4/21.
Electronically signed: Chidi Okonkwo, MD"""

# Findings and impression columns of a second study (no header).
FINDINGS = ("Liver: Couinaud segment 7 hypodense lesion, 12 mm. Gallbladder: Stones, no wall thickening.\n"
            "Kidneys: No hydronephrosis. Dictated by Jane Whitfield 04/05/2021.")
IMPRESSION = "Cholelithiasis. Gerota fascia intact. Call 555-867-5309 ext 12 with questions. Patient lives in Bakersfield, 55 Harbor Road."

# A narrated pathology case and a slide caption.
TRANSCRIPT = [
    "Today's case is Mrs. Delphine Harrow, a 93-year-old seen on January 5, 2022, MRN 44556677.",
    "Here you see Reed-Sternberg cells, the hallmark of Hodgkin lymphoma.",
    "The background is mixed inflammatory cells with eosinophils.",
]
CAPTION = "Biopsy from patient Ruth Ellsworth, specimen S22-004471: invasive ductal carcinoma, Nottingham grade 2."


@dataclass(frozen=True)
class Planted:
    """One planted identifier: the string as written, its Safe Harbor category, and the input field holding it."""

    text: str
    category: str
    field: str


PLANTED = [
    Planted("QUINCE", "name", "report text, DICOM PatientName"),
    Planted("BARTHOLOMEW", "name", "report text, DICOM PatientName"),
    Planted("Okonkwo", "name", "report text"),
    Planted("Chidi", "name", "report text"),
    Planted("Abernathy", "name", "report text"),
    Planted("Whitfield", "name", "findings"),
    Planted("MARCHETTI", "name", "DICOM ReferringPhysicianName"),
    Planted("Okafor", "name", "file name"),
    Planted("Delphine", "name", "transcript"),
    Planted("Harrow", "name", "transcript"),
    Planted("Ellsworth", "name", "slide caption"),
    Planted("1423 Larkspur", "geographic", "report text, DICOM PatientAddress"),
    Planted("62704", "geographic", "report text"),
    Planted("Larkspur Valley", "geographic", "DICOM InstitutionName"),
    Planted("Bakersfield", "geographic", "impression"),
    Planted("55 Harbor Road", "geographic", "impression"),
    Planted("March 3, 2021", "date", "report text"),
    Planted("3/3/21", "date", "report text"),
    Planted("03/03/1931", "date", "report text"),
    Planted("2/14/2020", "date", "report text"),
    Planted("90-year-old", "date", "report text (age over 89)"),
    Planted("04/05/2021", "date", "findings"),
    Planted("19310303", "date", "DICOM PatientBirthDate"),
    Planted("2021-02-20", "date", "EHR date"),
    Planted("January 5, 2022", "date", "transcript"),
    Planted("93-year-old", "date", "transcript (age over 89)"),
    Planted("(217) 555-0143", "phone", "report text, DICOM PatientTelephoneNumbers"),
    Planted("555-867-5309", "phone", "impression"),
    Planted("217-555-0199", "fax", "report text"),
    Planted("bquince@example.org", "email", "report text"),
    Planted("123-45-6789", "ssn", "report text"),
    Planted("00482913", "mrn", "report text, EHR patient_id, DICOM PatientID"),
    Planted("MRN-5550172", "mrn", "EHR patient_id"),
    Planted("88231907", "mrn", "EHR patient_id"),
    Planted("44556677", "mrn", "transcript"),
    Planted("HPX-4471-0923", "health_plan", "report text"),
    Planted("77812-330", "account", "report text"),
    Planted("D1234-56789-01234", "license", "report text"),
    Planted("7ABC123", "vehicle", "report text"),
    Planted("SN-88321-XK", "device", "report text"),
    Planted("CT-SN-449921", "device", "DICOM DeviceSerialNumber"),
    Planted("portal.larkspur-example.org", "url", "report text"),
    Planted("10.21.4.77", "ip", "report text"),
    Planted("FP-0042291", "biometric", "report text"),
    Planted("IMG_QUINCE_0303", "photo", "report text"),
    Planted("A7730451", "other_id", "study id, DICOM folder name, DICOM AccessionNumber, report text"),
    Planted("RAD21-0077812", "other_id", "study id, NIfTI file name"),
    Planted("Okafor_Grace", "other_id", "study id, NIfTI file name"),
    Planted("S22-004471", "other_id", "slide caption"),
    Planted("TCGA-A7-A0CE", "other_id", "slide id (TCGA barcode)"),
]

# Phrases of the texts above that must come out unchanged.
CLINICAL = [
    "Crohn disease", "Hodgkin lymphoma", "Morison pouch", "pouch of Douglas", "Parkinson disease", "right kidney",
    "4 mm", "15 cm", "12 mm", "2.3 x 1.5 cm", "-20 HU", "Bosniak 2 cyst", "Couinaud segment 7", "Gerota fascia",
    "Liver", "Spleen", "Kidneys", "Splenomegaly", "Terminal ileitis", "Cholelithiasis", "No hydronephrosis",
    "Reed-Sternberg cells", "eosinophils", "invasive ductal carcinoma", "Nottingham grade 2", "CT abdomen and pelvis",
]


def free_texts() -> dict[str, str]:
    """The corpus's free texts by field name."""
    return {"report text": REPORT, "findings": FINDINGS, "impression": IMPRESSION, "transcript": " ".join(TRANSCRIPT),
            "slide caption": CAPTION}


def planted_in_free_text() -> list[Planted]:
    """The planted identifiers written in a free text (those a text de-identifier must find)."""
    texts = free_texts()
    return [p for p in PLANTED if any(p.text.lower() in t.lower() for t in texts.values())]
