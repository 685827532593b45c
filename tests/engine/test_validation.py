"""Input validation: every refusal names the place (JSON path, patch); real inputs pass; nothing recurses.

Fast (no fits).  The same checks seen through the HTTP API: tests/service/test_hostile.py.
"""

from __future__ import annotations

import copy
import json

import pytest

from fitserve.engine.errors import InputError
from fitserve.engine.inputs import (
    MAX_NESTING,
    apply_patch,
    check_measurement,
    check_values,
    expand_hypotheses,
    load_json,
    parse_json,
    validate_patchset,
    validate_workspace,
)

from .conftest import EXAMPLE, LIKELIHOODS, RJ, load, need_shared


def workspace():
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "bkg",
                        "data": [40.0, 20.0],
                        "modifiers": [
                            {"name": "norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
                            {
                                "name": "shape",
                                "type": "histosys",
                                "data": {"hi_data": [42.0, 22.0], "lo_data": [38.0, 18.0]},
                            },
                            {"name": "staterror_SR", "type": "staterror", "data": [2.0, 1.5]},
                        ],
                    }
                ],
            },
            {
                "name": "CR",
                "samples": [
                    {
                        "name": "bkg",
                        "data": [100.0],
                        "modifiers": [{"name": "uncorr", "type": "shapesys", "data": [8.0]}],
                    }
                ],
            },
        ],
        "observations": [{"name": "SR", "data": [43.0, 19.0]}, {"name": "CR", "data": [104.0]}],
        "measurements": [
            {"name": "meas", "config": {"poi": "mu", "parameters": []}},
            {"name": "alt", "config": {"poi": "mu", "parameters": []}},
        ],
        "version": "1.0.0",
    }


SIGNAL = {"name": "signal", "data": [5.0, 2.0], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]}


def patchset(*patches):
    return {
        "metadata": {
            "description": "t",
            "digests": {"sha256": "0" * 64},
            "labels": ["m"],
            "references": {"hepdata": "ins0000000"},
        },
        "patches": list(patches),
        "version": "1.0.0",
    }


def patch(name, ops=None, values=(1.0,)):
    return {
        "metadata": {"name": name, "values": list(values)},
        "patch": ops
        if ops is not None
        else [{"op": "add", "path": "/channels/0/samples/-", "value": copy.deepcopy(SIGNAL)}],
    }


def refused(fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return info.value


def _set(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "where", "message"),
    [
        (
            ("channels", 0, "samples", 0, "data", 1),
            float("nan"),
            "workspace /channels/0/samples/0/data/1",
            "non-finite",
        ),
        # a negative yield is fine (negative-weight Monte Carlo), a negative expected rate is not
        (("channels", 0, "samples", 0, "data", 1), -1.0, "workspace /channels/0/samples", "expected rate of bin 1"),
        (("channels", 0, "samples", 0, "data", 1), 10**400, "workspace /channels/0/samples/0/data/1", "too large"),
        (("channels", 0, "samples", 0, "data", 1), True, "workspace /channels/0/samples/0/data/1", "numbers"),
        (("observations", 1, "data", 0), float("inf"), "workspace /observations/1/data/0", "non-finite"),
        (("observations", 1, "data", 0), -3, "workspace /observations/1/data/0", "negative"),
        (
            ("channels", 0, "samples", 0, "modifiers", 0, "data", "lo"),
            0.0,
            "workspace /channels/0/samples/0/modifiers/0/data/lo",
            "> 0",
        ),
        (
            ("channels", 0, "samples", 0, "modifiers", 0, "data", "hi"),
            -1.1,
            "workspace /channels/0/samples/0/modifiers/0/data/hi",
            "> 0",
        ),
        (
            ("channels", 0, "samples", 0, "modifiers", 1, "data", "hi_data", 0),
            float("nan"),
            "workspace /channels/0/samples/0/modifiers/1/data/hi_data/0",
            "non-finite",
        ),
        (
            ("channels", 0, "samples", 0, "modifiers", 1, "data", "lo_data"),
            [38.0],
            "workspace /channels/0/samples/0/modifiers/1/data/lo_data",
            "bins",
        ),
        (
            ("channels", 0, "samples", 0, "modifiers", 2, "data", 1),
            float("inf"),
            "workspace /channels/0/samples/0/modifiers/2/data/1",
            "non-finite",
        ),
        (
            ("channels", 1, "samples", 0, "modifiers", 0, "data", 0),
            float("-inf"),
            "workspace /channels/1/samples/0/modifiers/0/data/0",
            "non-finite",
        ),
        (("observations", 0, "data"), [43.0], "workspace /observations/0/data", "bins"),
        (("channels", 1, "name"), "SR", "workspace /channels/1/name", "duplicate channel"),
        (("observations", 1, "name"), "VR", "workspace /observations", "no observations for channel 'CR'"),
        (("channels", 0, "samples"), "abc", "workspace /channels/0/samples", "not of type 'array'"),
        (("version",), "2.0.0", "workspace /version", "not a valid pyhf workspace"),
        (
            ("measurements", 0, "config", "extra"),
            json.loads("[" * 200 + "]" * 200),
            "workspace /measurements/0/config/extra/0/0",
            "nested deeper",
        ),
    ],
)
def test_workspace_errors_name_the_json_path(path, value, where, message):
    err = refused(validate_workspace, _set(workspace(), path, value))
    assert err.where.startswith(where) and message in err.message, (err.where, err.message)


def test_schema_errors_do_not_echo_the_document():
    ws = workspace()
    ws["channels"][0]["samples"][0]["modifiers"][0] = {
        "name": "x",
        "type": "normsys",
        "data": {"hi": 1.0, "lo": 1.0, "pad": "y" * 10**5},
    }
    err = refused(validate_workspace, ws)
    assert err.where == "workspace /channels/0/samples/0/modifiers/0" and len(err.message) < 400


def test_patchset_errors_name_the_patch():
    ps = patchset(patch("a"), patch("b", values=(float("nan"),)))
    err = refused(validate_patchset, ps)
    assert (err.where, err.message[:11]) == ("patchset: patch 'b' /patches/1/metadata/values/0", "non-finite ")
    err = refused(validate_patchset, patchset(patch("a"), patch("a")))
    assert err.where == "patchset /patches/1/metadata/name" and "duplicate patch name 'a'" in err.message
    err = refused(validate_patchset, patchset(patch("a", [{"op": "frobnicate", "path": "/x", "value": 1}])))
    assert (
        err.where == "patchset: patch 'a' /patches/0/patch/0/op"
        and "unknown JSON-patch operation 'frobnicate'" in err.message
    )
    err = refused(validate_patchset, patchset(patch("a", [{"op": "move", "path": "/x"}])))
    assert err.where == "patchset: patch 'a' /patches/0/patch/0" and "needs 'from'" in err.message
    err = refused(validate_patchset, patchset(patch("a", [{"op": "add", "path": "channels/0", "value": 1}])))
    assert err.where == "patchset: patch 'a' /patches/0/patch/0/path" and "JSON pointer" in err.message
    err = refused(validate_patchset, patchset(patch("bad name!")))
    assert err.where == "patchset: patch 'bad name!' /patches/0/metadata/name" and "does not match" in err.message
    err = refused(validate_patchset, patchset(patch("a", values=(True,))))
    assert err.where == "patchset: patch 'a' /patches/0/metadata/values/0"
    err = refused(validate_patchset, json.loads(json.dumps(patchset(patch("a"))).replace('"m"', '"\\ud800"')))
    assert err.where == "patchset /metadata/labels/0" and "surrogate" in err.message


@pytest.mark.parametrize(
    ("ops", "where", "message"),
    [
        (
            [{"op": "add", "path": "/channels/0/samples/-", "value": {**SIGNAL, "data": [5.0, -1e6]}}],
            "P /channels/0/samples",
            "expected rate of bin 1",
        ),
        (
            [{"op": "add", "path": "/channels/0/samples/1", "value": {**SIGNAL, "data": [5.0]}}],
            "P /channels/0/samples/1/data",
            "has 1 bins, its channel has 2",
        ),
        (
            [{"op": "add", "path": "/channels/0/samples/-", "value": {**SIGNAL, "name": "bkg"}}],
            "P /channels/0/samples/1/name",
            "duplicate sample name 'bkg'",
        ),
        (
            [
                {
                    "op": "add",
                    "path": "/channels/0/samples/-",
                    "value": {**SIGNAL, "modifiers": [{"name": "mu", "type": "normsys", "data": {"hi": 0, "lo": 0.9}}]},
                }
            ],
            "P /channels/0/samples/1/modifiers/0/data/hi",
            "> 0",
        ),
        (
            [
                {
                    "op": "add",
                    "path": "/channels/0/samples/-",
                    "value": {**SIGNAL, "modifiers": [{"name": "mu", "type": "magic", "data": None}]},
                }
            ],
            "P /channels/0/samples/1/modifiers/0/type",
            "unknown modifier type 'magic'",
        ),
        ([{"op": "replace", "path": "/observations/1/data/0", "value": -1}], "P /observations/1/data/0", "negative"),
        (
            [{"op": "replace", "path": "/channels/1/samples/0/modifiers/0/data/0", "value": "8"}],
            "P /channels/1/samples/0/modifiers/0/data/0",
            "numbers",
        ),
        ([{"op": "remove", "path": "/channels/0/samples/0/data"}], "P /channels/0/samples/0/data", "list of numbers"),
        (
            [{"op": "move", "from": "/channels/1/samples/0/data", "path": "/observations/1/data"}],
            "P /channels/1/samples/0/data",
            "list",
        ),
        ([{"op": "add", "path": "/evil", "value": 1}], "P /evil", "top level"),
        ([{"op": "replace", "path": "", "value": []}], "P", "not a JSON object"),
        ([{"op": "add", "path": "/channels/9/samples/0", "value": SIGNAL}], "P", "does not apply"),
        ([{"op": "add", "path": "/channels/\u00b2/samples/0", "value": SIGNAL}], "P", "does not apply"),
        ([{"op": "add", "path": "channels", "value": SIGNAL}], "P", "does not apply"),
        ([{"op": "test", "path": "/version", "value": "0"}], "P", "does not apply"),
    ],
)
def test_patch_errors_name_the_path_in_the_patched_model(ops, where, message):
    bkg = workspace()
    before = copy.deepcopy(bkg)
    err = refused(apply_patch, bkg, ops, where="P")
    assert (err.where == where if where == "P" else err.where.startswith(where)) and message in err.message, (
        err.where,
        err.message,
    )
    assert bkg == before  # never modified


def test_measurement_and_poi():
    bkg = workspace()
    assert check_measurement(bkg, poi=False)["name"] == "meas"
    err = refused(check_measurement, bkg)
    assert err.where == "workspace /measurements/0/config/poi" and "POI 'mu'" in err.message
    err = refused(check_measurement, bkg, "nope", poi=False)
    assert err.where == "options.measurement" and "'meas', 'alt'" in err.message
    patched = apply_patch(bkg, patch("a")["patch"], where="patchset: patch 'a'")
    assert check_measurement(patched, "alt", where="patchset: patch 'a'")["name"] == "alt"
    wrong = apply_patch(
        bkg,
        [
            {
                "op": "add",
                "path": "/channels/0/samples/-",
                "value": {**SIGNAL, "modifiers": [{"name": "mu", "type": "staterror", "data": [1.0, 1.0]}]},
            }
        ],
        where="X",
    )
    err = refused(check_measurement, wrong, where="patchset: patch 'a'")
    assert err.where == "patchset: patch 'a' /measurements/0/config/poi" and "one parameter" in err.message


def test_parse_json_never_raises_anything_but_input_error(tmp_path):
    for raw, fragment in [
        (b"[" * 100_000, "nested too deeply"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("9" * 5000, "digits"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b"", "Expecting value"),
        ("{'a': 1}", "line 1"),
    ]:
        err = refused(parse_json, raw, where="body")
        assert err.where == "body" and fragment in err.message, err.message
    assert parse_json(b"\xef\xbb\xbf[1]", where="x") == [1]
    path = tmp_path / "deep.json"
    path.write_text("[" * 50_000 + "]" * 50_000)
    assert "nested too deeply" in refused(load_json, path).message


def test_deep_documents_are_refused_without_recursion():
    deep: list = []
    node = deep
    for _ in range(200_000):  # deeper than any recursion limit
        node.append([])
        node = node[0]
    err = refused(validate_workspace, {**workspace(), "channels": deep})
    assert f"nested deeper than {MAX_NESTING}" in err.message and err.where.startswith("workspace /channels/0/0/0")
    assert "nested deeper" in refused(validate_patchset, {"patches": deep}).message
    assert "nested deeper" in refused(check_values, {"modifier_settings": deep}, "options").message
    check_values({"test_stat": "q", "poi_test": 1.0}, "options")
    err = refused(check_values, {"poi_test": float("nan")}, "options", dotted=True)
    assert err.where == "options.poi_test" and "non-finite" in err.message
    err = refused(check_values, {"modifier_settings": {"normsys": {"\udc00": "x"}}}, "options", dotted=True)
    assert err.where == "options.modifier_settings.normsys" and "surrogate" in err.message
    assert "surrogate" in refused(check_values, {"measurement": "\ud800"}, "options").message


def test_finite_extremes_are_numbers():
    ws = workspace()
    ws["channels"][0]["samples"][0]["data"] = [1e308, 1e-300]
    ws["channels"][0]["samples"][0]["modifiers"][1]["data"] = {"hi_data": [1e308, 0.0], "lo_data": [0.0, 0.0]}
    ws["observations"][0]["data"] = [0, 10**300]  # a big integer that is still a float
    validate_workspace(ws)


def test_published_and_example_inputs_pass_quickly():
    """No false alarms on real likelihoods; the per-patch checks are cheap (about a millisecond) because a
    patched workspace is a copy-on-write of the background: what the patch does not touch is shared, not copied."""
    need_shared(RJ)
    for path in sorted(LIKELIHOODS.glob("*/BkgOnly.json")) + [EXAMPLE / "BkgOnly.json"]:
        bkg = load(path)
        validate_workspace(bkg, where=str(path))
        check_measurement(bkg, poi=False)
    for bkg_path, ps_path in [
        (RJ / "BkgOnly.json", RJ / "patchset.json"),
        (EXAMPLE / "BkgOnly.json", EXAMPLE / "patchset.json"),
    ]:
        bkg, ps = load(bkg_path), load(ps_path)
        validate_patchset(ps)
        for p in ps["patches"]:
            where = f"patchset: patch {p['metadata']['name']!r}"
            patched = apply_patch(bkg, p["patch"], where=where)
            check_measurement(patched, where=where)
            # every background sample no operation points into is the background's own object in the patched one
            paths = [op.get("path", "").split("/")[1:] for op in p["patch"]]
            for i, channel in enumerate(bkg["channels"]):
                kept = {id(s) for s in patched["channels"][i]["samples"]}
                for j, sample in enumerate(channel["samples"]):
                    if not any(path[:4] == ["channels", str(i), "samples", str(j)] for path in paths):
                        assert id(sample) in kept, (where, channel["name"], sample["name"])
        hyps = expand_hypotheses(bkg, ps["patches"][:3])  # the engine's own path: schema of what each patch changed
        assert len(hyps) == 3
