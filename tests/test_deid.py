"""pipelines.deid: keyed pseudonyms, the link table, free-text scrubbing, the DICOM allow-list, the output audit."""
from __future__ import annotations

import io
import tarfile
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipelines.deid import (
    KEY_ENV,
    Context,
    MissingKeyError,
    check_link_table_path,
    key_from_text,
    load_key,
    parse_date,
    scrub,
    scrub_name,
    write_link_table,
)
from pipelines.deid.audit import dicom_files, find_leaks
from pipelines.deid.compare import engines, score
from pipelines.deid.corpus import CATEGORIES, CLINICAL, PLANTED
from pipelines.deid.dicom import ALLOWED, allowed_attributes, identifying_values
from pipelines.errors import InputError

STUDY = date(2021, 3, 3)


# ---------------------------------------------------------------- keys


def test_pseudonyms_are_keyed_and_kind_specific() -> None:
    a, b = key_from_text("a" * 32, "test"), key_from_text("b" * 32, "test")
    assert a.pseudonym("patient", "00482913") == a.pseudonym("patient", " 00482913 ")  # whitespace as in a CSV cell
    assert a.pseudonym("patient", "00482913") != b.pseudonym("patient", "00482913")  # no key, no recomputing
    assert a.pseudonym("patient", "123") != a.pseudonym("study", "123")
    assert a.pseudonym("study", "A7730451").startswith("st-") and len(a.pseudonym("study", "x")) == 3 + 16
    assert "a" * 32 not in repr(a)


def test_key_comes_from_file_or_environment_and_is_required(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MissingKeyError, match=r"no pseudonym key: set DOMAINFM_PSEUDONYM_KEY or pass --key-file"):
        load_key(None)
    assert load_key(None, required=False) is None
    monkeypatch.setenv(KEY_ENV, "e" * 20)
    assert load_key(None).source == f"${KEY_ENV}"
    (tmp_path / "k").write_text("f" * 20 + "\n")
    from_file = load_key(tmp_path / "k")
    assert from_file.source.startswith("key file")
    assert from_file.pseudonym("patient", "1") == key_from_text("f" * 20, "x").pseudonym("patient", "1")
    (tmp_path / "short").write_text("secret")
    with pytest.raises(MissingKeyError, match="6 characters"):
        load_key(tmp_path / "short")
    with pytest.raises(MissingKeyError, match="not found"):
        load_key(tmp_path / "missing")


def test_link_table_never_inside_the_output(tmp_path: Path) -> None:
    out = tmp_path / "curated"
    for inside in (out / "links.csv", out / "sub" / "links.csv", out):
        with pytest.raises(InputError, match="inside the output folder"):
            check_link_table_path(inside, out)
    target = check_link_table_path(tmp_path / "secure" / "links.csv", out)
    assert write_link_table(target, [("patient", "pt-1", "00482913"), ("patient", "pt-1", "00482913")]) == 1
    assert pd.read_csv(target, dtype=str).to_dict("records") == [{"kind": "patient", "pseudonym": "pt-1", "original": "00482913"}]
    assert target.stat().st_mode & 0o077 == 0  # readable by its owner only


# ---------------------------------------------------------------- free text


@pytest.mark.parametrize("text,leak,token", [
    ("Read by Okonkwo.", "Okonkwo", "[NAME]"),
    ("PATIENT: QUINCE, BARTHOLOMEW  MRN: 00482913", "QUINCE", "[NAME]"),
    ("Discussed with Ms. Abernathy.", "Abernathy", "[NAME]"),
    ("Electronically signed: Chidi Okonkwo, MD", "Chidi", "[NAME]"),
    ("SSN: 123-45-6789.", "123-45-6789", "[SSN]"),
    ("Phone (217) 555-0143, fax 217-555-0199.", "555-0143", "[PHONE]"),
    ("Phone (217) 555-0143, fax 217-555-0199.", "555-0199", "[FAX]"),
    ("Lives at 1423 Larkspur Lane, Springfield, IL 62704.", "Larkspur", "[ADDRESS]"),
    ("Contact bquince@example.org.", "bquince", "[EMAIL]"),
    ("See https://portal.example.org/chart/88213 now.", "portal.example", "[URL]"),
    ("From host 10.21.4.77.", "10.21.4.77", "[IP]"),
    ("A 90-year-old man.", "90-year-old", "[AGE>89]"),
    ("Health plan ID: HPX-4471-0923.", "HPX-4471", "[ID]"),
    ("Account #: 77812-330.", "77812", "[ID]"),
    ("License plate 7ABC123.", "7ABC123", "[ID]"),
    ("Pacemaker serial SN-88321-XK.", "88321", "[ID]"),
    ("Fingerprint ID: FP-0042291.", "0042291", "[ID]"),
    ("Photo: IMG_QUINCE_0303.jpg", "QUINCE", "[ID]"),
    ("Seen at St. Mary's Hospital today.", "Mary", "[LOCATION]"),
    ("Accession A7730451.", "A7730451", "[ID]"),
])
def test_each_identifier_kind_is_replaced(text: str, leak: str, token: str) -> None:
    out = scrub(text)
    assert leak not in out and token in out, out


def test_dates_become_offsets_from_the_study() -> None:
    text = "Exam of March 3, 2021 compared with 2/14/2020 and 3/4/21; DOB: 03/03/1931. Seen March 2021, in 2019."
    out = scrub(text, Context(reference_date=STUDY))
    assert out == "Exam of [DATE+0d] compared with [DATE-383d] and [DATE+1d]; DOB: [DOB]. Seen [DATE], in 2019."
    assert scrub("On 3/4/21.") == "On [DATE]."  # no study date: no offset
    assert scrub("Born 1/2/1920.", Context(reference_date=STUDY)) == "Born [DOB]."
    assert scrub("Prior from 1/2/1925.", Context(reference_date=STUDY)) == "Prior from [DATE]."  # > 89 years back: no offset
    assert parse_date("13/02/2021") == date(2021, 2, 13) and parse_date("March 2021") is None
    assert "89-year-old" in scrub("An 89-year-old woman.")  # ages up to 89 are not identifiers


def test_known_identifiers_of_the_record_are_removed_everywhere() -> None:
    context = Context(known=["A7730451", "Larkspur Valley Medical Center"], names=["QUINCE^BARTHOLOMEW"])
    out = scrub("Mr quince returned; accession a7730451 at Larkspur Valley Medical Center.", context)
    assert "quince" not in out.lower() and "a7730451" not in out.lower() and "Larkspur" not in out
    assert context.known_pattern().search("Quincey") is None  # whole tokens only


def test_clinical_phrases_survive() -> None:
    text = ("Crohn disease and Hodgkin lymphoma. Fluid in Morison pouch and the pouch of Douglas. Parkinson disease. "
            "A 4 mm stone in the right kidney; spleen 15 cm; Bosniak 2 cyst, 2.3 x 1.5 cm, -20 HU; Couinaud segment 7; "
            "Gerota fascia; Reed-Sternberg cells; Langhans giant cells; Smith fracture; Nottingham grade 2. Um, okay.")
    assert scrub(text, Context(reference_date=STUDY)) == text


def test_scrub_needs_no_download(monkeypatch) -> None:
    """philter-lite would call nltk.pos_tag, whose model nltk downloads: the stand-in tagger replaces it."""
    import nltk

    def refuse(*args, **kwargs):
        raise AssertionError("nltk tagger or downloader called")

    monkeypatch.setattr(nltk, "pos_tag", refuse)
    monkeypatch.setattr(nltk, "download", refuse)
    assert scrub("Read by Okonkwo.") == "Read by [NAME]."


def test_file_names_are_scrubbed() -> None:
    assert scrub_name("Quince_consent.pdf", Context(names=["QUINCE^B"])) == "[NAME]_consent.pdf"
    assert scrub_name("IM0006.dcm") == "IM0006.dcm"


def test_corpus_recall_and_over_scrubbing() -> None:
    """The figures of the report: every planted identifier of the free texts found, no clinical phrase damaged."""
    assert set(p.category for p in PLANTED) == set(CATEGORIES)  # all 18 Safe Harbor categories planted
    assert len(PLANTED) >= 35
    result = score(engines(["philter+rules"])["philter+rules"])
    assert result["missed"] == [] and result["found"] == result["planted"] >= 35
    assert result["damaged"] == [] and result["clinical_kept"] == len(CLINICAL)


# ---------------------------------------------------------------- DICOM and audit


def _header():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "QUINCE^BARTHOLOMEW", "00482913", "A7730451"
    ds.InstitutionName, ds.ReferringPhysicianName = "Larkspur Valley Medical Center", "MARCHETTI^HELENA"
    ds.Modality, ds.ConvolutionKernel, ds.SliceThickness, ds.PixelSpacing = "CT", "B30f", 2.0, [0.7, 0.7]
    ds.StudyDescription = "CT ABDOMEN"
    return ds


def test_dicom_header_allow_list() -> None:
    kept = allowed_attributes(_header())
    assert kept == {"Modality": "CT", "ConvolutionKernel": "B30f", "SliceThickness": 2.0, "PixelSpacing": [0.7, 0.7]}
    assert set(kept) <= set(ALLOWED)
    values, names = identifying_values(_header())
    assert {"00482913", "A7730451", "Larkspur Valley Medical Center"} <= set(values)
    assert names == ["QUINCE^BARTHOLOMEW", "MARCHETTI^HELENA"] and "CT ABDOMEN" not in values


def test_audit_reads_tar_members_and_parquet(tmp_path: Path) -> None:
    pd.DataFrame({"caption": ["seen by quince"]}).to_parquet(tmp_path / "manifest.parquet")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        data = b"\x00" * 128 + b"DICM" + b"rest"
        info = tarfile.TarInfo("s1.dcm")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        note = b"MRN 00482913"
        info = tarfile.TarInfo("s1.txt")
        info.size = len(note)
        tar.addfile(info, io.BytesIO(note))
    leaks = find_leaks(tmp_path, ["QUINCE", "00482913", "absent"], {"stderr": "nothing"})
    assert set(leaks) == {"QUINCE", "00482913"} and "shard.tar:s1.txt" in leaks["00482913"]
    assert dicom_files(tmp_path) == ["shard.tar:s1.dcm"]
