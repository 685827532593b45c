"""Tests of the signal-grid generator, the example workspace and ``fitserve generate``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyhf
import pytest
import typer
from typer.testing import CliRunner

from fitserve.cli.generate import register
from fitserve.engine.inputs import apply_patch
from fitserve.generate import (
    default_grid,
    dumps,
    example_files,
    example_workspace,
    scaled_sample,
    signal_patchset,
    signal_scale,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO / "workspaces" / "example"
SHARED = REPO.parent / "shared" / "likelihoods"
ATLAS_SETTINGS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


def _shared_bkg(folder: str) -> dict:
    path = SHARED / folder / "BkgOnly.json"
    if not path.is_file():
        pytest.skip(f"published likelihood {path} not present (needs ../shared/likelihoods beside the checkout)")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def bkg() -> dict:
    return example_workspace()


@pytest.fixture(scope="module")
def patchset(bkg: dict) -> dict:
    return signal_patchset(bkg, default_grid(5, 5))


def test_default_grid_is_8x8_below_diagonal() -> None:
    grid = default_grid()
    assert len(grid) == 64 and len(set(grid)) == 64
    assert all(m2 < m1 for m1, m2 in grid)


def test_signal_scale_is_smooth_and_physical() -> None:
    # falls with the parent mass, vanishes towards the diagonal
    assert signal_scale(400, 0) > signal_scale(700, 0) > signal_scale(1100, 0) > 0
    assert signal_scale(500, 0) > signal_scale(500, 300) > signal_scale(500, 490) > signal_scale(500, 500) == 0
    assert signal_scale(600, 100) / signal_scale(601, 100) == pytest.approx(1.0, abs=0.01)


def test_example_workspace_is_valid_and_builds(bkg: dict) -> None:
    pyhf.schema.validate(bkg, "workspace.json")
    ws = pyhf.Workspace(bkg)
    assert ws.get_measurement()["config"]["poi"] == "mu_SIG"
    assert any(p["name"] == "lumi" for p in ws.get_measurement()["config"]["parameters"])
    # mu_SIG only exists once a signal patch is applied (as in the ATLAS BkgOnly files)
    model = ws.model(poi_name=None, modifier_settings=ATLAS_SETTINGS)
    assert model.config.npars > 10
    names = [c["name"] for c in bkg["channels"]]
    assert any(n.startswith("CR") for n in names) and any(n.startswith("SR") for n in names)
    assert 2 <= len(bkg["channels"][0]["samples"]) <= 4


def test_example_covers_every_modifier_type(bkg: dict) -> None:
    used = {m["type"] for c in bkg["channels"] for s in c["samples"] for m in s["modifiers"]}
    assert used == set(pyhf.modifiers.histfactory_set)


def test_example_data_are_counts(bkg: dict) -> None:
    for obs in bkg["observations"]:
        assert all(v >= 0 and float(v).is_integer() for v in obs["data"])


def test_patchset_is_valid(bkg: dict, patchset: dict) -> None:
    pyhf.schema.validate(patchset, "patchset.json")
    ps = pyhf.PatchSet(patchset)
    assert len(ps.patches) == 25
    assert patchset["metadata"]["digests"] == {"sha256": pyhf.utils.digest(bkg)}
    assert patchset["metadata"]["labels"] == ["m_parent", "m_LSP"]
    assert patchset["patches"][0]["metadata"] == {"name": "sig_400_0", "values": [400.0, 0.0]}


def test_generation_is_deterministic(bkg: dict, patchset: dict) -> None:
    assert signal_patchset(bkg, default_grid(5, 5)) == patchset
    assert example_workspace() == bkg
    assert example_workspace(seed=1) != bkg
    assert signal_patchset(bkg, default_grid(5, 5), seed=1) != patchset


def test_every_patch_applies_and_builds(bkg: dict, patchset: dict) -> None:
    ps = pyhf.PatchSet(patchset)
    ws = pyhf.Workspace(bkg)
    mcstat_names = set()
    for patch in patchset["patches"]:
        name = patch["metadata"]["name"]
        model = ps.apply(ws, name).model(modifier_settings=ATLAS_SETTINGS)
        assert model.config.poi_name == "mu_SIG"
        mcstat_names |= {p for p in model.config.par_order if p.startswith("shape_mcstat_")}
    assert len(mcstat_names) == len(patchset["patches"])  # one MC-stat parameter per point and SR


def test_signal_sample_modifiers(bkg: dict, patchset: dict) -> None:
    bkg_normsys = {
        m["name"] for c in bkg["channels"] for s in c["samples"] for m in s["modifiers"] if m["type"] == "normsys"
    }
    for op in patchset["patches"][6]["patch"]:
        assert op["op"] == "add"
        sample = op["value"]
        mods = {m["name"]: m for m in sample["modifiers"]}
        assert mods["mu_SIG"]["type"] == "normfactor" and mods["lumi"]["type"] == "lumi"
        assert 0.04 <= mods["SigXSec"]["data"]["hi"] - 1 <= 0.11
        shared = [n for n, m in mods.items() if m["type"] == "normsys" and n in bkg_normsys]
        assert 1 <= len(shared) <= 2
        (mcstat,) = [m for m in mods.values() if m["type"] == "shapesys"]
        assert "575_87p5" in mcstat["name"] and "SR" in mcstat["name"]
        for err, y in zip(mcstat["data"], sample["data"]):
            assert 0.05 <= err / y <= 0.2


def test_strength_scales_yields(bkg: dict) -> None:
    grid = [(600.0, 100.0)]
    one = signal_patchset(bkg, grid)["patches"][0]["patch"][0]["value"]["data"]
    two = signal_patchset(bkg, grid, strength=2.0)["patches"][0]["patch"][0]["value"]["data"]
    assert two == pytest.approx([2 * y for y in one], rel=1e-5)


def test_channel_choice(bkg: dict) -> None:
    ps = signal_patchset(bkg, [(500.0, 0.0)], channels=["CR_top", "SR1"])
    assert [op["path"] for op in ps["patches"][0]["patch"]] == ["/channels/0/samples/4", "/channels/2/samples/4"]
    with pytest.raises(ValueError, match="no channel"):
        signal_patchset(bkg, [(500.0, 0.0)], channels=["nope"])


def test_checked_in_example_files_match_generator() -> None:
    """workspaces/example must be exactly what ``fitserve generate example`` writes now."""
    for name, obj in example_files().items():
        path = EXAMPLE_DIR / name
        assert path.is_file(), f"{path} missing: run `fitserve generate example workspaces/example`"
        assert path.read_text() == dumps(obj), f"{path} drifted: run `fitserve generate example workspaces/example`"
        assert path.stat().st_size < 40_000


def test_single_workspace_is_one_full_hypothesis() -> None:
    files = example_files()
    single = files["single.json"]
    pyhf.schema.validate(single, "workspace.json")
    model = pyhf.Workspace(single).model(modifier_settings=ATLAS_SETTINGS)
    assert model.config.poi_name == "mu_SIG"


@pytest.mark.slow
def test_example_grid_has_excluded_and_allowed_points(bkg: dict, patchset: dict) -> None:
    """pyhf itself: a light point is excluded, the heaviest is not."""
    ps, ws = pyhf.PatchSet(patchset), pyhf.Workspace(bkg)
    cls = {}
    for name in ("sig_575_87p5", "sig_1100_87p5"):
        full = ps.apply(ws, name)
        model = full.model(modifier_settings=ATLAS_SETTINGS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls[name] = float(pyhf.infer.hypotest(1.0, full.data(model), model, test_stat="qtilde"))
    assert cls["sig_575_87p5"] < 0.05, cls
    assert cls["sig_1100_87p5"] > 0.05, cls


@pytest.mark.shared
@pytest.mark.parametrize("folder", ["atlas-susy-2018-04-staus", "atlas-susy-2018-31-sbottom-C"])
def test_patchset_for_published_likelihood(folder: str) -> None:
    bkg = _shared_bkg(folder)
    patchset = signal_patchset(bkg)
    pyhf.schema.validate(patchset, "patchset.json")
    assert len(patchset["patches"]) == 64
    sr = {op["path"].split("/")[2] for op in patchset["patches"][0]["patch"]}
    n_samples = sum(len(c["samples"]) for c in bkg["channels"])
    assert sr and all("SR" in bkg["channels"][int(i)]["name"] for i in sr)
    for patch in patchset["patches"]:  # every patch applies (copy-on-write, no schema check per patch)
        full = apply_patch(bkg, patch["patch"], where=patch["metadata"]["name"])
        assert sum(len(c["samples"]) for c in full["channels"]) == n_samples + len(sr)
    ps, ws = pyhf.PatchSet(patchset), pyhf.Workspace(bkg)
    for patch in patchset["patches"][::21]:  # a few full pyhf builds
        model = ps.apply(ws, patch["metadata"]["name"]).model(modifier_settings=ATLAS_SETTINGS)
        assert model.config.poi_name == "mu_SIG"
        assert any(p.startswith("shape_mcstat_signal_") for p in model.config.par_order)


def test_cli_example_and_signal(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Stand-in for fitserve's top-level app."""

    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "example", str(tmp_path / "ex"), "--grid", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["BkgOnly.json", "patchset.json", "single.json"]
    assert len(json.loads((tmp_path / "ex" / "patchset.json").read_text())["patches"]) == 9

    out = tmp_path / "ps.json"
    args = [
        "generate",
        "signal",
        str(tmp_path / "ex" / "BkgOnly.json"),
        "-o",
        str(out),
        "--n-parent",
        "4",
        "--n-lsp",
        "2",
    ]
    result = runner.invoke(app, args + ["--seed", "3", "--strength", "0.5"])
    assert result.exit_code == 0, result.output
    ps = json.loads(out.read_text())
    pyhf.schema.validate(ps, "patchset.json")
    assert len(ps["patches"]) == 8

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for argv in (
        ["generate", "signal", str(bad)],
        ["generate", "signal", str(tmp_path / "missing.json")],
        ["generate", "signal", str(tmp_path / "ex" / "patchset.json")],
        ["generate", "signal", str(tmp_path / "ex" / "BkgOnly.json"), "--channel", "nope"],
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code != 0
        assert "fitserve: error:" in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_default_signal_channels_are_the_srs() -> None:
    from fitserve.generate import _signal_channels

    spec = {"channels": [{"name": n} for n in ("CRISR_cuts", "SRlow_cuts", "ee_SR_high", "VR_cuts")]}
    assert _signal_channels(spec, None) == [1, 2]
    assert _signal_channels({"channels": [{"name": "A"}, {"name": "B"}]}, None) == [0, 1]


def test_bad_arguments(bkg: dict) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        signal_patchset(bkg, [(500.0, 0.0), (500, 0)])
    with pytest.raises(ValueError, match="non-negative"):
        signal_patchset(bkg, [(500.0, 0.0)], strength=-1.0)
    with pytest.raises(ValueError):
        example_workspace(n_channels=2)


def test_scaled_sample_scales_templates_and_absolute_uncertainties_with_the_nominal():
    sample = {
        "name": "sig",
        "data": [2.0, 4.0],
        "modifiers": [
            {"name": "mu", "type": "normfactor", "data": None},
            {"name": "jes", "type": "histosys", "data": {"hi_data": [2.5, 5.0], "lo_data": [1.5, 3.0]}},
            {"name": "xs", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
            {"name": "stat", "type": "staterror", "data": [0.2, 0.4]},
            {"name": "mc", "type": "shapesys", "data": [0.1, 0.3]},
        ],
    }
    before = json.dumps(sample)
    out = scaled_sample(sample, 2.0)
    assert json.dumps(sample) == before  # a copy, the input untouched
    mods = {m["name"]: m["data"] for m in out["modifiers"]}
    assert out["data"] == [4.0, 8.0]
    assert mods["jes"] == {"hi_data": [5.0, 10.0], "lo_data": [3.0, 6.0]}
    assert mods["stat"] == [0.4, 0.8] and mods["mc"] == [0.2, 0.6]
    assert mods["xs"] == {"hi": 1.1, "lo": 0.9} and mods["mu"] is None  # relative: unchanged
