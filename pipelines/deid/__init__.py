"""De-identification shared by every domain: keyed pseudonyms, free-text scrubbing, DICOM allow-list, output audit.

- keys.py: HMAC-SHA256 pseudonyms under a secret key (--key-file or $DOMAINFM_PSEUDONYM_KEY), the link table;
- text.py: free text (reports, transcripts, captions, file names) through philter-lite plus our rules;
- dicom.py: the DICOM attributes that may reach an output (an allow-list);
- audit.py: search every file of an output folder (tar members, parquet, CSV, JSON, logs) for identifiers;
- corpus.py: planted identifiers of the 18 Safe Harbor categories and clinical phrases that must survive;
- compare.py: `python -m pipelines.deid.compare` scores engines on the corpus.
"""
from __future__ import annotations

from pipelines.deid.keys import KEY_ENV, MissingKeyError, PseudonymKey, check_link_table_path, key_from_text, load_key, write_link_table
from pipelines.deid.text import Context, find_spans, parse_date, scrub, scrub_name, warm_up

__all__ = [
    "KEY_ENV", "MissingKeyError", "PseudonymKey", "check_link_table_path", "key_from_text", "load_key", "write_link_table",
    "Context", "find_spans", "parse_date", "scrub", "scrub_name", "warm_up",
]
