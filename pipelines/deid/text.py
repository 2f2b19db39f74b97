r"""Free-text de-identification: philter-lite's filters plus our own rules, keeping clinical meaning.

Every text that curation writes (report sections, captions, transcripts, file names in rejects and
warnings) goes through `scrub(text, context)`. Three detectors propose spans, in priority order:

1. the record's known identifiers (`Context.known`: its patient and study ids, names and places from
   its DICOM header or tables), matched anywhere, case-insensitively, as whole tokens;
2. our rules (RULES below) for what philter-lite misses or labels loosely: labelled identifiers (MRN,
   accession, SSN, health plan, account, licence, vehicle, device, biometric, photo ... numbers),
   names after a title or a role ("Dr. X", "read by X", "Referring: X", "X, MD"), "LAST, FIRST" pairs
   of listed names, telephone and fax numbers, e-mail, URLs, IP addresses, street addresses, ZIP codes,
   institutions ("... Hospital", "... Medical Center"), ages over 89, birth dates, dates, and tokens
   holding 5 or more consecutive digits;
3. philter-lite (UCSF Philter's maintained fork, BSD-3): its regular expressions and its first- and
   last-name dictionaries, from its shipped `philter_delta` configuration. We use the spans it marks
   as PHI (its exclude map), not its whitelist-only output, which stars every word it does not know.

Philter's name dictionaries apply only to proper nouns (POS tag NNP), and it tags with
`nltk.pos_tag`, whose model nltk downloads at run time. Nothing may download here, so `_pos_tags`
stands in: a capitalised or upper-case word is NNP unless it opens a sentence or a heading and is a
common word (philter's own `nonames` list), a number is CD. This is deterministic (the same text gives
the same output on every machine), which a downloaded tagger model would not promise either.

Clinical meaning is protected: eponyms before a clinical head noun ("Crohn disease", "Hodgkin
lymphoma", "Morison pouch", "pouch of Douglas"), a list of eponyms and acronyms that stand alone
(Parkinson, Bosniak, Couinaud, ...), anatomy and measurements are never taken for names or ids by
rules 2-3. A known identifier (rule 1) is removed even there: a patient called Parkinson loses the
word everywhere in their own record.

Replacements: "[NAME]", "[ID]", "[SSN]", "[PHONE]", "[FAX]", "[EMAIL]", "[URL]", "[IP]", "[ADDRESS]",
"[LOCATION]", "[AGE>89]", "[DOB]"; dates become "[DATE+Nd]" / "[DATE-Nd]" (days from
`Context.reference_date`, the study date: consistent within a record) or "[DATE]" without a reference
date, for partial dates (month and year) and for offsets over 89 years. Years alone are kept (Safe
Harbor allows them). Numeric dates are read month-first unless the first number exceeds 12.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Callable, Iterable, Optional, Sequence

ENGINES = ("philter+rules", "rules", "philter")


@dataclass(frozen=True)
class Span:
    """A stretch of text to replace: [start, end), its label, and which detector found it (priority: lower wins)."""

    start: int
    end: int
    label: str
    priority: int


@dataclass
class Context:
    """What is known about the record a text belongs to.

    `known`: identifiers of the record (ids, places) removed wherever they appear, as whole strings;
    `names`: people's names of the record ("QUINCE^BARTHOLOMEW", "Okonkwo, Chidi"), removed whole and
    part by part (each part of 3 or more letters);
    `reference_date`: dates become day offsets from it (the study date).
    """

    known: Sequence[str] = ()
    names: Sequence[str] = ()
    reference_date: Optional[date] = None
    _pattern: Optional[re.Pattern] = field(default=None, repr=False, compare=False)

    def known_pattern(self) -> Optional[re.Pattern]:
        """One case-insensitive regex for the known identifiers and the names' parts (built once)."""
        if self._pattern is None:
            self._pattern = _known_regex(tuple(self.known), tuple(self.names))
        return self._pattern


# ---------------------------------------------------------------- vocabularies

# Eponyms followed by one of these words (one lowercase word may come between: "Langhans giant cells")
# are clinical terms, not people.
_EPONYM_HEADS = (
    "disease|diseases|syndrome|syndromes|lymphoma|sarcoma|tumou?r|pouch|sign|signs|fracture|hernia|ligament|space|cyst|node|"
    "nodes|triangle|canal|duct|ducts|criteria|classification|score|scale|grade|grading|stage|procedure|operation|repair|test|"
    "phenomenon|lesion|diverticulum|esophagus|oesophagus|ulcer|body|bodies|cell|cells|palsy|angle|line|lines|point|fascia|"
    "capsule|gland|glands|node|nodule|nodules|anastomosis|shunt|tube|catheter|valve|ring|ampulla|sphincter|foramen|fossa|"
    "segment|segments|plexus|artery|vein|nerve|muscle|membrane|area|zone|effect|malformation|anomaly|deformity|aneurysm|"
    "encephalopathy|arthritis|thyroiditis|dystrophy|ataxia|dementia|myeloma|leukemia|leukaemia|carcinoma|neuroma|"
    "hypoplasia|mass|collection|spot|spots|nodes|bursa|physis|view|maneuver|manoeuvre|position|system|method|rule|"
    "rules|index|ratio|type|variant|complex|reflex|rosette|rosettes|crystal|crystals|spiral|spirals|granule|granules|"
    "inclusion|inclusions|fibre|fibres|fiber|fibers|hyaline|tangles|nodule|corpuscle|corpuscles"
)
_EPONYM = re.compile(
    rf"\b(?P<v>[A-Z][a-z]+(?:[-\u2013][A-Z][a-z]+)?)(?:'s|\u2019s|s')?(?:[ \t]+[a-z]+)?[ \t]+(?:{_EPONYM_HEADS})\b"
    r"|\b(?:pouch|space|canal|ligament|duct|node|fascia|triangle|line|sign|foramen|ampulla|sphincter|loop|angle|bursa|"
    r"valve|capsule|diverticulum)[ \t]+of[ \t]+(?P<w>[A-Z][a-z]+)\b"
)
# Eponyms that stand alone in reports (no head noun needed) and are rarely anyone's surname; common surnames
# that are also eponyms (Smith, Paget, Graves ...) are protected only before a head noun ("Smith fracture").
CLINICAL_WORDS = frozenset(w.lower() for w in """
Parkinson Parkinsonism Parkinsonian Alzheimer Crohn Hodgkin Bosniak Couinaud Morison Gerota Glisson Meckel Wilms
Klatskin Kerley Hounsfield Fleischner Lugano Gleason Whipple Foley Hickman Port-a-cath Billroth Roux Zenker Schatzki
Warthin Waldenstrom Waldenström Hirschsprung Kawasaki Takayasu Wegener Sjogren Sjögren Behcet Behçet Raynaud Ehlers
Danlos Klinefelter Gaucher Niemann Menetrier Ménétrier Zollinger Peutz Jeghers Caroli Alagille Bochdalek Morgagni
Hesselbach Grynfeltt Amyand Krukenberg Sertoli Leydig Bartholin Nabothian Colles Monteggia Galeazzi Lisfranc Chopart
Maisonneuve Schatzker Pauwels Gustilo Kienbock Kienböck Freiberg Osgood Schlatter Scheuermann Bertolotti Tarlov Modic
Pfirrmann Meyerding Spetzler Balthazar Papanicolaou Giemsa Ziehl Neelsen Verhoeff Mucicarmine Hematoxylin Eosin
Sylvian Rolandic Magendie Luschka Sylvius Labbe Trolard Heubner Adamkiewicz Wirsung Rokitansky Aschoff Kupffer
Eustachian Thebesian Vieussens Kommerell Scimitar Ebstein Fallot Eisenmenger Lutembacher Bartter Gitelman Maffucci
Ollier Langerhans Erdheim Rosai Dorfman Castleman Kikuchi Mikulicz Hurthle Hürthle Chiari Virchow Schmorl Mirizzi
Spigelian Budd Barrett Hashimoto Reed-Sternberg Sternberg Langhans Councilman Call-Exner Psammoma Curschmann Lewy
Hirano Negri Cowdry
BI-RADS LI-RADS PI-RADS TI-RADS O-RADS Lung-RADS CAD-RADS TNM RECIST PERCIST ASPECTS NIHSS AJCC WHO FIGO
""".split())
# Acronyms and report labels that stand for no person (philter's dictionaries hold some of them as names).
CLINICAL_ACRONYMS = frozenset("""
CT MR MRI PET SPECT US CXR KUB IV PO HU SUV CTA MRA MRCP ERCP EUS DWI ADC FLAIR STIR ICU ED ER OR PACU MRN DOB SSN ACC
ID IP PID DX HX RX SX TX FX CC AP PA LAT LLQ RLQ LUQ RUQ IVC SVC CBD GB CSF CNS PE DVT MI CHF COPD CKD ESRD HCC RCC
NSCLC SCLC GIST AAA TIA CVA AF AFIB LV RV LA RA RUL RML RLL LUL LLL LN LNS SI GI GU ENT MD DO RN NP PHD FRCR MBBS
FINDINGS IMPRESSION CONCLUSION COMPARISON TECHNIQUE HISTORY INDICATION CLINICAL INFORMATION SUMMARY OPINION REPORT
""".split())
_TITLES = r"(?:Dr|Drs|Mr|Mrs|Ms|Mx|Miss|Prof|Professor|Sister|Nurse|Rev)"
_CREDENTIALS = r"(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PhD|Ph\.D\.|FRCR|FRCPC|MBBS|MBChB|RT\(R\)|RT|RDMS|ARRT)"
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|"
    "SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC"
)
_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_MONTH_NUMBER = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
# Words that start a role phrase but are no one's name ("discussed with the Emergency Department").
_NOT_NAMES = frozenset("""
the a an this that these patient patients radiology radiologist department emergency team clinic nurse nursing physician
surgery surgical oncology referring attending service unit icu ed er family daughter son wife husband mother father primary
care provider staff on call ward floor doctor doctors resident fellow consultant registrar gp pcp technologist me us him her
them whom who prior previous comparison report reports study studies exam imaging ct mri ultrasound scan
""".split())

_NAME_WORD = r"[A-Z][A-Za-z'\u2019-]*[a-zA-Z]\b(?![ \t]*[:#])"
_NAME = rf"{_NAME_WORD}(?:[ \t]+[A-Z]\.?(?=[ \t]))?(?:[ \t]+{_NAME_WORD}){{0,2}}"
_NAME_LISTED = rf"{_NAME_WORD}(?:[ \t]*[,^][ \t]*{_NAME_WORD})?(?:[ \t]+[A-Z]\.?(?![A-Za-z]))?(?:[ \t]+{_NAME_WORD}){{0,2}}"

_DATE_FORMS = (
    rf"\b\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}\b"  # 2021-03-04
    rf"|\b\d{{1,2}}[-/.]\d{{1,2}}[-/.](?:\d{{4}}|\d{{2}})\b"  # 03/04/2021, 3/4/21
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)?[ \t-]*(?:of[ \t]+)?{_MONTHS}\.?,?[ \t-]*(?:\d{{4}}|'?\d{{2}}\b)?"  # 4 March 2021, 04-Mar-21
    rf"|\b{_MONTHS}\.?[ \t]+\d{{1,2}}(?:st|nd|rd|th)?\b(?:,?[ \t]+\d{{4}})?"  # March 4, 2021 / March 4
    rf"|\b{_MONTHS}\.?,?[ \t]+\d{{4}}\b"  # March 2021
    r"|\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"  # 20210304
)
_LABELLED_STRONG = (
    r"MRN|MR[ \t]*#|MR[ \t]+No\.?|Medical[ \t]+record(?:[ \t]+(?:number|no\.?|#))?|Acc(?:ession)?(?:[ \t]*(?:#|No\.?|number))?|"
    r"Patient[ \t]+ID|PID|Health[ \t]*plan(?:[ \t]+(?:ID|number|no\.?|#))?|Member[ \t]+ID|Insurance[ \t]+(?:ID|no\.?|number)|"
    r"Policy(?:[ \t]+(?:ID|no\.?|number|#))?|Beneficiary(?:[ \t]+(?:ID|no\.?|number))?|Account(?:[ \t]+(?:number|no\.?|#))?|"
    r"Acct\.?(?:[ \t]*#)?|Licen[cs]e(?:[ \t]+(?:number|no\.?|#))?|Driver'?s?[ \t]+licen[cs]e(?:[ \t]+(?:number|no\.?|#))?|"
    r"Lic\.?[ \t]*#|DEA(?:[ \t]*#)?|NPI|Certificate(?:[ \t]+(?:number|no\.?|#))?|VIN|Vehicle(?:[ \t]+ID)?|"
    r"(?:License[ \t]+)?plate(?:[ \t]+(?:number|no\.?|#))?|Serial(?:[ \t]+(?:number|no\.?|#))?|S/N|Device[ \t]+(?:ID|serial)|UDI|"
    r"Lot(?:[ \t]+(?:number|no\.?|#))|Fingerprint(?:[ \t]+ID)?|Voice[ \t]*print(?:[ \t]+ID)?|Retina(?:l)?[ \t]+scan(?:[ \t]+ID)?|"
    r"Biometric(?:[ \t]+ID)?|Photo(?:graph)?(?:[ \t]+(?:ID|file))?|Image[ \t]+file|Order(?:[ \t]+(?:number|no\.?|#))|"
    r"Encounter(?:[ \t]+(?:number|no\.?|#|ID))?|Visit(?:[ \t]+(?:number|no\.?|#|ID))|Case[ \t]+(?:number|no\.?|#|ID)|"
    r"Specimen(?:[ \t]+(?:number|no\.?|#|ID))|Study[ \t]+ID|Exam[ \t]+(?:number|no\.?|#|ID)|Record[ \t]+(?:number|no\.?|#)|"
    r"SSN|Social[ \t]+security(?:[ \t]+(?:number|no\.?|#))?"
)
_ID_VALUE = r"[A-Za-z0-9][A-Za-z0-9_./-]*\d[A-Za-z0-9_./-]*(?<![./-])|\d+"


def _rule(pattern: str, label: str, flags: int = 0, check: Optional[Callable[[re.Match], bool]] = None
          ) -> tuple[re.Pattern, str, Optional[Callable[[re.Match], bool]]]:
    return re.compile(pattern, flags), label, check


def _valid_ip(m: re.Match) -> bool:
    return all(int(p) <= 255 for p in m.group(0).split("."))


def _listed_name(m: re.Match) -> bool:
    """'LAST, FIRST': at least one part is a listed first or last name and none is a clinical word."""
    parts = [p.lower() for p in re.split(r"[\s,^]+", m.group("v")) if len(p) > 1]
    if any(p in CLINICAL_WORDS or p.upper() in CLINICAL_ACRONYMS for p in parts):
        return False
    first, last = name_dictionaries()
    return any(p in first or p in last for p in parts)


RULES = [
    # order matters only for equal spans; overlapping spans are merged (the earlier rule's label wins)
    _rule(rf"(?i:\b(?:DOB|D\.O\.B\.?|date[ \t]+of[ \t]+birth|birth[ \t]*date|born(?:[ \t]+on)?))[ \t]*[:#]?[ \t]*"
          rf"(?P<v>{_DATE_FORMS})", "DOB"),
    _rule(r"\b\d{3}-\d{2}-\d{4}\b", "SSN"),
    _rule(r"(?i:\b(?:SSN|social[ \t]+security(?:[ \t]+(?:number|no\.?|#))?))[ \t]*[:#]?[ \t]*(?P<v>\d{9}|\d{3}[ -]\d{2}[ -]\d{4})", "SSN"),
    _rule(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", "EMAIL"),
    _rule(r"(?i:\b(?:https?://|ftp://|www\.))[^\s<>\"']*[^\s<>\"'.,;:)\]]", "URL"),
    _rule(r"\b(?:[A-Za-z0-9-]+\.)+(?i:com|org|net|edu|gov|io|info|biz|us|uk|de|fr|ca|au|nl|health|hospital)\b"
          r"(?:/[^\s<>\"']*[^\s<>\"'.,;:)\]])?", "URL"),
    _rule(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", "IP", check=_valid_ip),
    _rule(r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b", "IP"),
    _rule(r"(?i:\bfax)[ \t]*(?:no\.?|number|#)?[ \t]*[:#]?[ \t]*"
          r"(?P<v>(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4})", "FAX"),
    _rule(r"(?<![\d-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?:[ \t]*(?i:ext|x)\.?[ \t]*\d{1,5})?(?![\d-])", "PHONE"),
    _rule(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-])", "PHONE"),
    _rule(rf"(?i:\b(?:{_LABELLED_STRONG}))[ \t]*[:#]?[ \t]*(?:(?i:no\.?|number|#)[ \t]*[:#]?[ \t]*)?(?P<v>{_ID_VALUE})", "ID"),
    _rule(r"\b(?:(?i:age[ds]?)[ \t]*[:=]?[ \t]*)(?:9\d|1[0-4]\d)\b(?:[ \t-]*(?i:years?|yrs?|y/?o|y\.o\.))?(?:[ \t-]*(?i:old))?", "AGE"),
    _rule(r"\b(?:9\d|1[0-4]\d)(?:[ \t-]*(?i:years?|yrs?)[ \t-]*(?i:old)|[ \t-]*(?i:y/o|yo|y\.o\.)|[ \t-]*(?i:year-old|yr-old))", "AGE"),
    _rule(r"(?i:\bP\.?[ \t]?O\.?[ \t]+Box)[ \t]+\d+", "ADDRESS"),
    _rule(r"\b\d{1,6}[ \t]+(?:[A-Z][A-Za-z'\u2019.-]*[ \t]+){1,4}(?i:street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|"
          r"court|ct|way|place|pl|terrace|ter|parkway|pkwy|highway|hwy|circle|cir|square|sq)\b\.?"
          r"(?:,?[ \t]*(?i:apt|apartment|suite|ste|unit|#)\.?[ \t]*[A-Za-z0-9-]+)?"
          rf"(?:,[ \t]*[A-Z][A-Za-z .'-]+?)?(?:,?[ \t]*(?:{_STATES})\b(?:[ \t]+\d{{5}}(?:-\d{{4}})?)?)?", "ADDRESS"),
    _rule(rf"\b[A-Z][a-z]+(?:[ \t][A-Z][a-z]+)?,[ \t]*(?:{_STATES})[ \t]+\d{{5}}(?:-\d{{4}})?\b", "ADDRESS"),
    _rule(r"(?i:\b(?:zip|postal[ \t]+code|post[ \t]*code))[ \t]*[:#]?[ \t]*"
          r"(?P<v>\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?[ \t]*\d[A-Z]{2})", "ADDRESS"),
    _rule(r"(?i:\b(?:address|addr|residence|home[ \t]+address))[ \t]*:[ \t]*(?P<v>[^\n;]+?)(?=\.[ \t]|\.$|;|\n|$)", "ADDRESS"),
    _rule(r"(?i:\b(?:lives|living|resides|residing|resident|moved|relocated|travel(?:l)?ed|from)[ \t]+(?:in|at|near|to|from)[ \t]+)"
          r"(?P<v>[A-Z][a-z]+(?:[ \t][A-Z][a-z]+)?)", "LOCATION"),
    _rule(r"(?P<v>\b(?:(?:St|Mt)\.?[ \t]+|Saint[ \t]+|Mount[ \t]+)?(?:[A-Z][A-Za-z'\u2019.-]+[ \t]+){1,4}"
          r"(?:Hospital|Medical[ \t]+Cent(?:er|re)|Health(?:care)?[ \t]+System|Clinic|Infirmary|Imaging[ \t]+Cent(?:er|re)|"
          r"Cancer[ \t]+Cent(?:er|re)|Health[ \t]+Cent(?:er|re)|Radiology[ \t]+Associates|Medical[ \t]+Group)\b)", "LOCATION"),
    _rule(rf"(?P<v>{_DATE_FORMS})", "DATE", re.I),
    _rule(rf"\b{_TITLES}\.?[ \t]+(?P<v>{_NAME})", "NAME"),
    _rule(rf"(?i:\b(?:read|dictated|signed|reviewed|reported|transcribed|verified|interpreted|approved|seen|examined|performed|"
          rf"discussed|communicated|called|notified|paged|cc|attn|referred)(?:[ \t]+(?:electronically|by|with|to|from))*)"
          rf"[ \t]*:?[ \t]*(?:{_TITLES}\.?[ \t]+)?(?P<v>{_NAME})", "NAME"),
    _rule(rf"(?i:\b(?:patient(?:[ \t]+name)?|pt\.?(?:[ \t]+name)?|name|referring(?:[ \t]+(?:physician|provider|doctor|md|clinician))?|"
          rf"ordering(?:[ \t]+(?:physician|provider|clinician))?|attending|radiologist|physician|provider|technologist|tech|"
          rf"resident|fellow|consultant|surgeon|nurse|next[ \t]+of[ \t]+kin|guardian|emergency[ \t]+contact|contact|"
          rf"signed|interpreted|dictated|transcribed))[ \t]*[:#][ \t]*(?:{_TITLES}\.?[ \t]+)?(?P<v>{_NAME_LISTED})", "NAME"),
    _rule(rf"(?P<v>{_NAME_WORD}(?:[ \t]+[A-Z]\.)?(?:[ \t]+{_NAME_WORD}){{0,2}}),?[ \t]+{_CREDENTIALS}(?![A-Za-z])", "NAME"),
    _rule(r"(?P<v>\b[A-Z][A-Z'-]+,[ \t]*[A-Z][A-Z'-]+(?:[ \t]+[A-Z]\.?)?)\b", "NAME", check=_listed_name),
    _rule(r"(?P<v>\b[A-Z][A-Za-z'-]+\^[A-Z][A-Za-z'-]+(?:\^[A-Za-z'-]*)*)", "NAME"),
    _rule(r"\b(?=[A-Za-z0-9]*\d{5})[A-Za-z0-9]+(?:[-_/][A-Za-z0-9]+)*\b", "ID"),
]
_TOKENS = {
    "NAME": "[NAME]", "ID": "[ID]", "SSN": "[SSN]", "PHONE": "[PHONE]", "FAX": "[FAX]", "EMAIL": "[EMAIL]", "URL": "[URL]",
    "IP": "[IP]", "ADDRESS": "[ADDRESS]", "LOCATION": "[LOCATION]", "AGE": "[AGE>89]", "DOB": "[DOB]", "DATE": "[DATE]",
}
MAX_DATE_OFFSET_DAYS = 89 * 365  # a larger offset from the study would tell an age over 89


# ---------------------------------------------------------------- philter-lite


@lru_cache(maxsize=1)
def _philter() -> tuple[list, frozenset[str]]:
    """philter-lite's filters (its shipped philter_delta config) and its `nonames` word list, loaded once per process."""
    from importlib.resources import as_file, files

    import philter_lite
    import philter_lite.philter as engine
    from philter_lite.filters import filter_db

    engine._get_pos = _pos_tags  # nltk.pos_tag would download its model at run time (see module docstring)
    with as_file(files("philter_lite").joinpath("configs/philter_delta.toml")) as config:
        patterns = philter_lite.load_filters(str(config))
    return patterns, frozenset(w.lower() for w in filter_db.set_db["nonames"])


@lru_cache(maxsize=1)
def name_dictionaries() -> tuple[frozenset[str], frozenset[str]]:
    """philter-lite's first-name and last-name dictionaries, lower case."""
    from philter_lite.filters import filter_db

    return frozenset(filter_db.set_db["firstnames"]), frozenset(filter_db.set_db["lastnames"])


_CLEAN_SPLIT = re.compile(r"(\s+)")
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]")


def _pos_tags(text: str) -> list[tuple[str, str]]:
    """Tokens as philter-lite splits them, with a deterministic stand-in for nltk's tags (NNP, CD, NN, SP)."""
    common = _philter()[1]  # loaded: philter-lite calls this from detect_phi
    tokens: list[str] = []
    for item in _CLEAN_SPLIT.split(text):
        if not item:
            continue
        if item.isspace():
            tokens.append(item)
        else:
            tokens += [e for e in _CLEAN_SPLIT.split(_NON_ALNUM.sub(" ", item)) if e]
    mostly_upper = sum(c.isupper() for c in text) > 0.6 * max(1, sum(c.isalpha() for c in text))
    tagged: list[tuple[str, str]] = []
    offset = 0
    for token in tokens:
        start = offset
        offset += len(token)
        if token.isspace():
            tagged.append((token, "SP"))
            continue
        if token.isdigit():
            tagged.append((token, "CD"))
            continue
        if not token[:1].isupper():
            tagged.append((token, "NN"))
            continue
        before = text[:start].rstrip()
        opens = not before or before[-1] in ".:;!?\n" or text[:start].endswith("\n")
        heading = text[offset:offset + 3].lstrip()[:1] == ":"
        word = token.lower()
        if word in CLINICAL_WORDS or token.upper() in CLINICAL_ACRONYMS or (len(token) <= 2 and not token.isupper()):
            # short title-case words are fillers and function words ("Um", "So", "Ok"), not names
            tagged.append((token, "NN"))
        elif word in common and (opens or heading or (mostly_upper and token.isupper())):
            tagged.append((token, "NN"))
        else:
            tagged.append((token, "NNP"))
    return tagged


def _philter_spans(text: str) -> list[Span]:
    from philter_lite import detect_phi

    patterns, _ = _philter()
    _, exclude, tracker = detect_phi(text, patterns)
    dates = {(p.start, p.stop) for p in tracker.phi if p.phi_type == "DATE"}
    spans = []
    for start, stop in exclude.filecoords():
        piece = text[start:stop]
        if not piece.strip():
            continue
        if (start, stop) in dates:
            label = "DATE"
        elif "@" in piece:
            label = "EMAIL"
        elif any(c.isdigit() for c in piece):
            label = "ID"
        else:
            label = "NAME"
        spans.append(Span(start, stop, label, 3))
    return spans


# ---------------------------------------------------------------- detection


def _known_regex(known: tuple[str, ...], names: tuple[str, ...]) -> Optional[re.Pattern]:
    parts: set[str] = set()
    for value in (*known, *names):
        value = str(value or "").strip()
        if len(value) >= 2:
            parts.add(value)
    for value in names:
        for piece in re.split(r"[\s,^_]+", str(value or "")):
            piece = piece.strip(".")
            # name parts, but not initials, titles or credentials
            if len(piece) >= 3 and piece.lower() not in ("the", "and", "md", "phd", "mrs", "miss", "prof"):
                parts.add(piece)
    if not parts:
        return None
    alternatives = "|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.I)


def identifiers_in(text: str) -> tuple[list[str], list[str]]:
    """(ids, names) that our rules find in `text`: add them to a Context to remove them everywhere in the record."""
    ids, names = [], []
    for span in _merge(_rule_spans(text)):
        piece = text[span.start:span.end].strip()
        if len(piece) < 3:
            continue
        if span.label == "NAME":
            names.append(piece)
        elif span.label in ("ID", "SSN", "PHONE", "FAX", "EMAIL", "URL", "IP", "ADDRESS", "LOCATION"):
            ids.append(piece)
    return ids, names


def _rule_spans(text: str) -> list[Span]:
    spans = []
    for pattern, label, check in RULES:
        for m in pattern.finditer(text):
            if check is not None and not check(m):
                continue
            group = "v" if "v" in pattern.groupindex and m.group("v") is not None else 0
            start, end = m.span(group)
            if label == "NAME":
                start, end = _trim_name(text, start, end)
            if end > start:
                spans.append(Span(start, end, label, 2))
    return spans


def _trim_name(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop leading and trailing words that are nobody's name ("the", "Emergency", "Department")."""
    words = list(re.finditer(r"[A-Za-z'\u2019.^-]+", text[start:end]))
    keep = [w for w in words if w.group(0).strip(".").lower() not in _NOT_NAMES]
    if not keep:
        return start, start
    return start + keep[0].start(), start + keep[-1].end()


def _protected(text: str) -> list[tuple[int, int]]:
    ranges = []
    for m in _EPONYM.finditer(text):
        group = "v" if m.group("v") is not None else "w"
        ranges.append(m.span(group))
    for m in re.finditer(r"[A-Za-z][A-Za-z'\u2019-]*", text):
        word = m.group(0)
        bare = re.sub(r"(?:'s|\u2019s)$", "", word)
        if bare.lower() in CLINICAL_WORDS or (word.isupper() and word in CLINICAL_ACRONYMS):
            ranges.append(m.span())
    return ranges


def _subtract(span: Span, protected: list[tuple[int, int]], text: str) -> list[Span]:
    pieces = [(span.start, span.end)]
    for a, b in protected:
        nxt = []
        for s, e in pieces:
            if b <= s or a >= e:
                nxt.append((s, e))
                continue
            if s < a:
                nxt.append((s, a))
            if b < e:
                nxt.append((b, e))
        pieces = nxt
    return [Span(s, e, span.label, span.priority) for s, e in pieces if re.search(r"[A-Za-z0-9]", text[s:e])]


def find_spans(text: str, context: Optional[Context] = None, engine: str = "philter+rules") -> list[Span]:
    """The identifier spans of `text`, merged and in order (see the module docstring for the detectors)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    context = context or Context()
    spans: list[Span] = []
    known = context.known_pattern()
    if known is not None:
        spans += [Span(m.start(), m.end(), "ID" if any(c.isdigit() for c in m.group(0)) else "NAME", 1) for m in known.finditer(text)]
    found = []
    if engine in ("philter+rules", "rules"):
        found += _rule_spans(text)
    if engine in ("philter+rules", "philter"):
        found += _philter_spans(text)
    protected = _protected(text) if engine != "philter" else []  # "philter": philter-lite as shipped, for comparison
    for span in found:
        # dates, numbers and labelled values are never clinical words: only names are checked against the protections
        spans += _subtract(span, protected, text) if span.label in ("NAME", "LOCATION") else [span]
    return _merge(spans)


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            best = min((last, span), key=lambda s: (s.priority, -(s.end - s.start)))
            merged[-1] = Span(last.start, max(last.end, span.end), best.label, min(last.priority, span.priority))
        else:
            merged.append(span)
    return merged


# ---------------------------------------------------------------- dates


def parse_date(text: str) -> Optional[date]:
    """A full date (day, month and year) written in `text`, or None (partial, or not a date)."""
    value = text.strip().rstrip(".,")
    m = re.fullmatch(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})|((?:19|20)\d{2})(\d{2})(\d{2})", value)
    if m:
        y, mo, d = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5), m.group(6))
        return _make_date(int(y), int(mo), int(d))
    m = re.fullmatch(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})", value)
    if m:
        a, b, y = int(m.group(1)), int(m.group(2)), _year(m.group(3))
        return _make_date(y, a, b) if a <= 12 else _make_date(y, b, a)
    words = re.findall(r"[A-Za-z]+|\d+", value)
    month = next((_MONTH_NUMBER.get(w[:3].lower()) for w in words if w.isalpha() and w[:3].lower() in _MONTH_NUMBER), None)
    numbers = [w for w in words if w.isdigit()]
    if month is None or len(numbers) != 2:
        return None
    day, year = (numbers[0], numbers[1]) if len(numbers[1]) in (2, 4) and int(numbers[0]) <= 31 else (numbers[1], numbers[0])
    return _make_date(_year(year), month, int(day))


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:
        return 1900 + y if y >= 69 else 2000 + y
    return y


def _make_date(y: int, m: int, d: int) -> Optional[date]:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def _date_token(piece: str, reference: Optional[date]) -> str:
    when = parse_date(piece)
    if when is None or reference is None:
        return "[DATE]"
    days = (when - reference).days
    if abs(days) > MAX_DATE_OFFSET_DAYS:
        return "[DATE]"
    return f"[DATE{days:+d}d]"


# ---------------------------------------------------------------- public


def scrub(text: str, context: Optional[Context] = None, engine: str = "philter+rules") -> str:
    """`text` with every identifier found replaced by its placeholder (module docstring)."""
    if not text:
        return ""
    context = context or Context()
    out = []
    last = 0
    for span in find_spans(text, context, engine):
        out.append(text[last:span.start])
        piece = text[span.start:span.end]
        if span.label == "DATE":
            out.append(_date_token(piece, context.reference_date))
        else:
            out.append(_TOKENS[span.label])
        last = span.end
    out.append(text[last:])
    return "".join(out)


def scrub_name(name: str, context: Optional[Context] = None) -> str:
    """A file or folder name with identifiers replaced ("Quince_consent.pdf" -> "[NAME]_consent.pdf").

    Separators (_ - .) are read as spaces so names glued by them are found; the placeholders keep
    the separators around them.
    """
    if not name:
        return name
    spaced = re.sub(r"[_]", " ", name)
    spans = find_spans(spaced, context)
    out, last = [], 0
    for span in spans:
        out.append(name[last:span.start])
        out.append("[DATE]" if span.label == "DATE" else _TOKENS[span.label])
        last = span.end
    out.append(name[last:])
    return "".join(out)


def warm_up() -> None:
    """Load philter-lite's filters now (a few seconds, once per process) rather than at the first text."""
    _philter()


def leaves_identifiers(texts: Iterable[str], context: Optional[Context] = None) -> bool:
    """Whether scrubbing would change any of `texts` (they hold something taken for an identifier)."""
    return any(scrub(t, context) != t for t in texts if t)
