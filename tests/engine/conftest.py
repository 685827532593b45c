"""Shared inputs for the engine tests: the project's example and published likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "workspaces" / "example"
LIKELIHOODS = REPO.parent / "shared" / "likelihoods"
RJ = LIKELIHOODS / "atlas-susy-2018-06-3L-RJ"
ATLAS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


def load(path: Path):
    return json.loads(path.read_text())


def need_shared(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"published likelihoods not found at {path} (CI has ../shared beside the checkout)")


@pytest.fixture(scope="session")
def example():
    return load(EXAMPLE / "BkgOnly.json"), load(EXAMPLE / "patchset.json")


@pytest.fixture(scope="session")
def rj():
    need_shared(RJ)
    return load(RJ / "BkgOnly.json"), load(RJ / "patchset.json"), load(RJ / "reference_cls_pyhf.json")
