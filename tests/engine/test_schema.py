"""fitserve.engine.schema checks pyhf's schemas as pyhf does, without importing pyhf."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pyhf
import pytest

from fitserve.engine import schema

EXAMPLE = Path(__file__).parents[2] / "workspaces" / "example"


def _workspace() -> dict:
    return json.loads((EXAMPLE / "BkgOnly.json").read_text())


def _broken() -> list[tuple[str, dict]]:
    out = []
    ws = _workspace()
    w = copy.deepcopy(ws)
    del w["version"]
    out.append(("no version", w))
    w = copy.deepcopy(ws)
    w["channels"][0]["samples"][0]["modifiers"][0]["type"] = "nosuchsys"
    out.append(("unknown modifier type", w))
    w = copy.deepcopy(ws)
    w["channels"][0]["samples"][0]["data"] = "many"
    out.append(("data not a list", w))
    w = copy.deepcopy(ws)
    w["observations"] = {}
    out.append(("observations not a list", w))
    w = copy.deepcopy(ws)
    w["measurements"][0]["config"]["parameters"] = [{"name": "lumi", "bounds": "wide"}]
    out.append(("bounds not a list", w))
    return out


def test_a_valid_workspace_passes_both():
    ws = _workspace()
    pyhf.schema.validate(ws, "workspace.json")
    schema.validate(ws, "workspace.json")


@pytest.mark.parametrize(("what", "spec"), _broken(), ids=[w for w, _ in _broken()])
def test_the_same_refusal_and_message_as_pyhf(what, spec):
    with pytest.raises(pyhf.exceptions.InvalidSpecification) as theirs:
        pyhf.schema.validate(spec, "workspace.json")
    with pytest.raises(schema.SchemaError) as ours:
        schema.validate(spec, "workspace.json")
    assert ours.value.error.message == theirs.value.parent.message
    assert list(ours.value.error.absolute_path) == list(theirs.value.parent.absolute_path)


def test_patchsets_too():
    patchset = json.loads((EXAMPLE / "patchset.json").read_text())
    schema.validate(patchset, "patchset.json")
    del patchset["metadata"]
    with pytest.raises(schema.SchemaError):
        schema.validate(patchset, "patchset.json")


def test_checking_a_workspace_does_not_import_pyhf():
    """The point of the module: an engine process checks inputs without pyhf's 1 s import."""
    code = (
        "import json, sys; from fitserve.engine.inputs import validate_workspace; "
        f"validate_workspace(json.load(open({str(EXAMPLE / 'BkgOnly.json')!r})), where='workspace'); "
        "print('pyhf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pyhf_type_rules_booleans_are_numbers():
    """pyhf's ``allow_tensors`` checker takes any ``numbers.Number``: the same document passes both."""
    ws = _workspace()
    ws["channels"][0]["samples"][0]["data"][1] = True
    pyhf.schema.validate(ws, "workspace.json")
    schema.validate(ws, "workspace.json")
