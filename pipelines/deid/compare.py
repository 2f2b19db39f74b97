"""`python -m pipelines.deid.compare`: score free-text de-identification engines on the planted corpus.

For each engine: recall per Safe Harbor category (planted identifiers of the corpus's free texts no
longer found in the output / planted), over-scrubbing (clinical phrases of corpus.CLINICAL changed /
total), and seconds per text after loading. Engines:
- `rules`: our rules alone (pipelines.deid.text.RULES);
- `philter`: philter-lite's shipped philter_delta filters alone (its PHI spans; POS tags from our stand-in;
  none of our clinical-term protections);
- `philter+rules`: what curation uses;
- `presidio`: Presidio's predefined pattern recognizers with a blank spaCy pipeline (no NER model is
  installable here), when presidio-analyzer is installed; tldextract is kept offline.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date
from typing import Callable

from pipelines.deid.corpus import CATEGORIES, CLINICAL, free_texts, planted_in_free_text
from pipelines.deid.text import Context, scrub, warm_up

Engine = Callable[[str], str]


def _presidio() -> Engine:
    """Presidio's pattern recognizers on a blank spaCy pipeline; spans replaced by <ENTITY>."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    class BlankSpacy(SpacyNlpEngine):
        def __init__(self) -> None:
            self.nlp = {"en": spacy.blank("en")}
            self.nlp_configuration = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "blank"}]}
            self.ner_model_configuration = NerModelConfiguration()

        def load(self) -> None:
            pass

    import tldextract

    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled suffix list: no download
    nlp = BlankSpacy()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=nlp)
    analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])

    def run(text: str) -> str:
        results = sorted(analyzer.analyze(text, language="en"), key=lambda r: r.start)
        out, last = [], 0
        for r in results:
            if r.start < last:
                continue
            out += [text[last:r.start], f"<{r.entity_type}>"]
            last = r.end
        return "".join(out + [text[last:]])

    return run


def engines(names: list[str]) -> dict[str, Engine]:
    """The named engines that can run here (presidio only when installed)."""
    context = Context(reference_date=date(2021, 3, 3))
    found: dict[str, Engine] = {}
    for name in names:
        if name == "presidio":
            try:
                found[name] = _presidio()
            except ImportError as exc:
                print(f"presidio: not installed ({exc})")
            continue
        found[name] = lambda text, n=name: scrub(text, context, n)
    return found


def score(run: Engine) -> dict:
    """Recall per category, over-scrubbing and speed of one engine on the corpus's free texts."""
    texts = free_texts()
    start = time.perf_counter()
    outputs = {field: run(text) for field, text in texts.items()}
    seconds = (time.perf_counter() - start) / len(texts)
    blob = "\n".join(outputs.values())
    per_category: dict[str, list[int]] = {}
    missed = []
    for planted in planted_in_free_text():
        found = planted.text.lower() not in blob.lower()
        counts = per_category.setdefault(planted.category, [0, 0])
        counts[0] += found
        counts[1] += 1
        if not found:
            missed.append(planted.text)
    damaged = [c for c in CLINICAL if c not in blob]
    kept = len(CLINICAL) - len(damaged)
    total_found = sum(v[0] for v in per_category.values())
    total = sum(v[1] for v in per_category.values())
    return {"recall": {k: f"{v[0]}/{v[1]}" for k, v in sorted(per_category.items(), key=lambda kv: list(CATEGORIES).index(kv[0]))},
            "found": total_found, "planted": total, "missed": missed, "clinical_kept": kept, "clinical_total": len(CLINICAL),
            "damaged": damaged, "seconds_per_text": round(seconds, 4)}


def main() -> None:
    """Print the comparison as a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", nargs="*", default=["rules", "philter", "philter+rules", "presidio"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if any(n.startswith("philter") for n in args.engines):
        warm_up()
    results = {name: score(run) for name, run in engines(args.engines).items()}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    names = list(results)
    categories = sorted({c for r in results.values() for c in r["recall"]}, key=list(CATEGORIES).index)
    print("| category | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for c in categories:
        print(f"| {c} | " + " | ".join(results[n]["recall"].get(c, "-") for n in names) + " |")
    print("| **all** | " + " | ".join(f"{results[n]['found']}/{results[n]['planted']}" for n in names) + " |")
    print("| clinical phrases kept | " + " | ".join(f"{results[n]['clinical_kept']}/{results[n]['clinical_total']}" for n in names) + " |")
    print("| ms per text | " + " | ".join(f"{1000 * results[n]['seconds_per_text']:.0f}" for n in names) + " |")
    for n in names:
        print(f"{n}: missed {results[n]['missed']}; damaged {results[n]['damaged']}")


if __name__ == "__main__":
    main()
