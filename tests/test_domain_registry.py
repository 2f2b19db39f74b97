"""Domain discovery: every package under domains/ is found without importing it, and a stage
imports only the domain it names (the others' readers take seconds to import)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines import domain as registry

ROOT = Path(__file__).resolve().parents[1]


def test_names_lists_every_domain_package() -> None:
    assert {"remote_sensing", "pathology", "ct"} <= set(registry.names())


def test_get_returns_the_named_domain_and_refuses_unknown_ones() -> None:
    d = registry.get("ct")
    assert d.name == "ct" and d.modality == "volume"
    assert registry.get("pairs").modality == "image"
    with pytest.raises(KeyError, match="unknown domain 'nope'.*remote_sensing"):
        registry.get("nope")


def test_a_stage_imports_only_its_own_domain() -> None:
    code = (
        "import sys\n"
        "from pipelines import cli, domain\n"
        "domain.get('remote_sensing').curation()\n"
        "heavy = [m for m in ('av', 'openslide', 'monai', 'domains.pathology', 'domains.ct') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_curate_group_builds_the_named_domains_command() -> None:
    from pipelines.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["curate", "--help"])
    assert listing.exit_code == 0
    for name in ("pairs", "remote_sensing", "pathology", "ct"):
        assert name in listing.output
    ct_help = runner.invoke(app, ["curate", "ct", "--help"])
    assert ct_help.exit_code == 0 and "--phecode-map" in ct_help.output
    assert runner.invoke(app, ["curate", "nope"]).exit_code != 0
