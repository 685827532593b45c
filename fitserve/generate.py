"""Synthetic signal grids and example workspaces.

Published background-only likelihoods (e.g. the ATLAS stau and sbottom ones)
come without signal patches, and tests, benchmarks and the README quickstart
need a small workspace that we may check in.  This module writes both:

* :func:`signal_patchset` builds a pyhf PatchSet for *any* background-only
  workspace: one patch per point of a 2-D mass grid, each adding a signal
  sample to the signal-region channels with the modifiers a real ATLAS patch
  carries (POI normfactor, lumi, cross-section and experimental normsys, a
  per-point MC-stat shapesys).  Yields are a smooth function of the masses,
  scaled to the background's statistical and systematic size in each bin, so
  that at ``strength=1`` roughly a third to a half of the default grid is
  excluded at CLs < 0.05.
* :func:`example_workspace` builds a small background-only workspace of our
  own (no ATLAS data) that uses every modifier type pyhf knows.
* :func:`scaled_sample` scales a sample's yields as a whole (benchmarks make
  variants of published workspaces with it).

Everything is deterministic given ``seed``; numbers are rounded to six
significant digits so that the checked-in files do not depend on the last bit
of a platform's ``exp``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

Spec = dict[str, Any]

#: pyhf's patchset schema requires a non-empty ``references`` object whose only
#: allowed key is an INSPIRE id ``insNNNNNNN``; synthetic signals have no
#: HEPData record, so this all-zero id says "none" explicitly.
NO_HEPDATA_RECORD = "ins0000000"

#: Default mass ranges (GeV): every LSP mass is below every parent mass.
PARENT_RANGE = (400.0, 1100.0)
LSP_RANGE = (0.0, 350.0)

#: Signal model constants.  XSEC_SLOPE: the cross-section falls by e every
#: XSEC_SLOPE GeV of parent mass.  SIGNAL_SCALE: overall yield at the lightest
#: parent, in units of the background's per-bin uncertainty (tuned so that
#: about 40% of the default grid is excluded at strength 1).
XSEC_SLOPE = 250.0
SIGNAL_SCALE = 9.0
BKG_REL_SYST = 0.2  # assumed background systematic when scaling the signal


def _r(x: float) -> float:
    """Round to six significant digits (stable, compact JSON)."""
    return float(f"{x:.6g}")


def _fmt(m: float) -> str:
    """Mass as a name fragment: 400 -> '400', 412.5 -> '412p5'."""
    return f"{m:g}".replace(".", "p").replace("-", "m").replace("+", "")


def _digest(spec: Spec) -> str:
    import pyhf  # pyhf's own digest, so that pyhf's PatchSet accepts the patchset it is written into

    return pyhf.utils.digest(spec)


def default_grid(n_parent: int = 8, n_lsp: int = 8) -> list[tuple[float, float]]:
    """An ``n_parent`` x ``n_lsp`` grid over PARENT_RANGE x LSP_RANGE (m_LSP < m_parent)."""
    if n_parent < 1 or n_lsp < 1:
        raise ValueError("grid sizes must be at least 1")
    parents = np.linspace(*PARENT_RANGE, n_parent) if n_parent > 1 else np.array([PARENT_RANGE[0]])
    lsps = np.linspace(*LSP_RANGE, n_lsp) if n_lsp > 1 else np.array([LSP_RANGE[0]])
    return [(_r(m1), _r(m2)) for m1 in parents for m2 in lsps]


def signal_scale(m_parent: float, m_lsp: float) -> float:
    """Signal size at a mass point, relative to the background uncertainty.

    A falling cross-section times an acceptance that vanishes as the mass
    splitting closes (m_LSP -> m_parent): smooth over the whole plane.
    """
    xsec = math.exp(-(m_parent - PARENT_RANGE[0]) / XSEC_SLOPE)
    split = max(m_parent - m_lsp, 0.0) / max(m_parent, 1e-9)
    acceptance = 1.0 - math.exp(-split / 0.2)
    return SIGNAL_SCALE * xsec * acceptance


def _measurement(spec: Spec) -> Spec:
    measurements = spec.get("measurements") or []
    if not measurements:
        raise ValueError("the workspace has no measurement")
    return measurements[0]


def _signal_channels(spec: Spec, channels: Sequence[str] | None) -> list[int]:
    """Indices of the channels that get signal: given names, else the SRs, else all."""
    names = [c["name"] for c in spec["channels"]]
    if channels:
        missing = [c for c in channels if c not in names]
        if missing:
            raise ValueError(f"no channel named {', '.join(map(repr, missing))}")
        return [names.index(c) for c in channels]
    # "SR" at the start or after a non-letter: SR1, SR_high, ee_SRhigh; not CRISR.
    srs = [i for i, n in enumerate(names) if re.search(r"(?<![A-Za-z])SR", n)]
    return srs or list(range(len(names)))


def _background(channel: Spec) -> np.ndarray:
    """Total nominal background per bin (nominal yields, factors at 1)."""
    return np.sum([np.asarray(s["data"], dtype=float) for s in channel["samples"]], axis=0)


_NOT_EXPERIMENTAL = ("theory", "theo", "xsec", "xs_", "norm", "scale_var", "pdf", "generator")


def _normsys_names(channel: Spec) -> list[str]:
    """Normsys names in a channel that look experimental (detector), not background theory.

    A signal shares detector systematics with the background, not e.g.
    ``ttbar_theory``: names mentioning a sample or a theory-like word are
    skipped unless nothing else is left.
    """
    samples = {s["name"].lower() for s in channel["samples"]}
    names = sorted({m["name"] for s in channel["samples"] for m in s["modifiers"] if m["type"] == "normsys"})
    experimental = [
        n
        for n in names
        if not any(w in n.lower() for w in _NOT_EXPERIMENTAL) and not samples & set(n.lower().split("_"))
    ]
    return experimental or names


def signal_patchset(
    bkg_spec: Spec,
    grid: list[tuple[float, float]] | None = None,
    *,
    poi: str | None = None,
    channels: list[str] | None = None,
    labels: Sequence[str] = ("m_parent", "m_LSP"),
    seed: int = 0,
    strength: float = 1.0,
    hepdata: str = NO_HEPDATA_RECORD,
    description: str | None = None,
) -> Spec:
    """A pyhf PatchSet with one synthetic signal hypothesis per grid point.

    Each patch adds, to every signal channel, a sample named after the mass
    point carrying: the POI normfactor (default: the measurement's POI),
    ``lumi`` (if the measurement configures it), a ``SigXSec`` normsys, one or
    two experimental normsys shared by name with the background, and a
    per-point, per-channel MC-stat ``shapesys``.  Per bin the yield is
    ``strength * signal_scale(m1, m2) * w_b * sqrt(B_b + (0.2 B_b)^2)``, where
    ``w_b`` spreads the signal over the SR bins (harder spectrum for heavier
    parents) and is normalised so that the SRs together matter about as much
    as one bin.  The seed fixes the experimental systematics chosen, the
    per-bin shape jitter and the MC-stat sizes.
    """
    grid = default_grid() if grid is None else [(float(a), float(b)) for a, b in grid]
    measurement = _measurement(bkg_spec)
    poi = poi or measurement["config"]["poi"]
    has_lumi = any(p["name"] == "lumi" for p in measurement["config"].get("parameters", []))
    chan_idx = _signal_channels(bkg_spec, channels)
    if seed < 0 or strength < 0:
        raise ValueError("seed and strength must be non-negative")
    if len({(_fmt(m1), _fmt(m2)) for m1, m2 in grid}) != len(grid):
        raise ValueError("the grid has duplicate mass points")

    # Per-channel things that stay fixed across the grid (so yields stay smooth).
    n_sr_bins = sum(len(bkg_spec["channels"][i]["samples"][0]["data"]) for i in chan_idx)
    fixed = []
    for i in chan_idx:
        channel = bkg_spec["channels"][i]
        bkg = np.clip(_background(channel), 1e-3, None)
        sigma = np.sqrt(bkg + (BKG_REL_SYST * bkg) ** 2) / math.sqrt(n_sr_bins)
        rng = np.random.default_rng([seed, i])  # one stream per channel: stable if others change
        jitter = np.exp(rng.normal(0.0, 0.1, size=bkg.size))
        names = _normsys_names(channel) or sorted({n for c in bkg_spec["channels"] for n in _normsys_names(c)})
        chosen = sorted(rng.choice(names, size=min(2, len(names)), replace=False).tolist()) if names else []
        exp_sys = []
        for name in chosen:
            up = rng.uniform(0.02, 0.06) * rng.choice([-1.0, 1.0])
            exp_sys.append((name, 1.0 + up, 1.0 - up * rng.uniform(0.8, 1.2)))
        fixed.append((i, channel["name"], len(channel["samples"]), sigma * jitter, exp_sys))
    mcstat_base = np.random.default_rng([seed, len(bkg_spec["channels"])]).uniform(0.0, 0.05)

    patches = []
    for m1, m2 in grid:
        tag = f"{_fmt(m1)}_{_fmt(m2)}"
        sample_name = f"signal_{tag}"
        x = min(max((m1 - PARENT_RANGE[0]) / (PARENT_RANGE[1] - PARENT_RANGE[0]), 0.0), 1.0)
        xsec_unc = 0.05 + 0.05 * x
        mcstat = 0.05 + mcstat_base + 0.10 * x
        ops = []
        for i, cname, n_samples, scale, exp_sys in fixed:
            nb = scale.size
            pos = np.linspace(-0.5, 0.5, nb) if nb > 1 else np.zeros(1)
            tilt = np.exp(2.0 * (x - 0.5) * pos)
            tilt /= math.sqrt(np.mean(tilt**2))
            yields = [_r(max(strength * signal_scale(m1, m2) * w, 1e-6)) for w in scale * tilt]
            modifiers: list[Spec] = [{"name": poi, "type": "normfactor", "data": None}]
            if has_lumi:
                modifiers.append({"name": "lumi", "type": "lumi", "data": None})
            modifiers.append(
                {"name": "SigXSec", "type": "normsys", "data": {"hi": _r(1 + xsec_unc), "lo": _r(1 - xsec_unc)}}
            )
            for name, hi, lo in exp_sys:
                modifiers.append({"name": name, "type": "normsys", "data": {"hi": _r(hi), "lo": _r(lo)}})
            modifiers.append(
                {
                    "name": f"shape_mcstat_{sample_name}_{cname}",
                    "type": "shapesys",
                    "data": [_r(mcstat * y) for y in yields],
                }
            )
            ops.append(
                {
                    "op": "add",
                    "path": f"/channels/{i}/samples/{n_samples}",
                    "value": {"name": sample_name, "data": yields, "modifiers": modifiers},
                }
            )
        patches.append({"metadata": {"name": f"sig_{tag}", "values": [_r(m1), _r(m2)]}, "patch": ops})

    return {
        "version": "1.0.0",
        "metadata": {
            "description": description
            or f"Synthetic signal grid ({len(grid)} points, seed {seed}, strength {strength:g}) generated by fitserve.generate",
            "digests": {"sha256": _digest(bkg_spec)},
            "labels": list(labels),
            "references": {"hepdata": hepdata},
        },
        "patches": patches,
    }


def example_workspace(n_channels: int = 3, n_bins: int = 3, seed: int = 0) -> Spec:
    """A small synthetic background-only workspace using every pyhf modifier type.

    Two control regions (``CR_top`` fixes ``mu_ttbar``, ``CR_fakes`` fixes the
    per-bin ``sf_fakes`` shapefactor shared with every region) and
    ``n_channels - 2`` signal regions ``SR1``, ``SR2``..., each with
    ``n_bins`` bins.  Samples: ttbar (normfactor, normsys, histosys, lumi,
    staterror), diboson (normsys, histosys, lumi, staterror), fakes
    (shapefactor) and other (lumi, shapesys).  Relative uncertainties are
    3-30%: realistic, and large enough to keep the fit well conditioned.
    Observed data are a Poisson draw of the nominal background.  Like the
    published ATLAS BkgOnly files, the measurement's POI is ``mu_SIG``, which
    only the signal patches add: build the background-only model with
    ``model(poi_name=None)``.
    """
    if n_channels < 3 or n_bins < 1:
        raise ValueError("need n_channels >= 3 (two CRs and at least one SR) and n_bins >= 1")
    rng = np.random.default_rng(seed)
    falling = np.exp(-np.arange(n_bins) * 0.6)  # spectra fall with the bin index
    regions = {"CR_top": (400.0, 15.0, 20.0, 5.0), "CR_fakes": (20.0, 8.0, 150.0, 5.0)}
    for k in range(n_channels - 2):
        regions[f"SR{k + 1}"] = tuple(v * 0.6**k for v in (8.0, 6.0, 3.0, 1.5))

    channels, observations = [], []
    for cname, (n_tt, n_vv, n_fk, n_ot) in regions.items():
        shape = falling * rng.uniform(0.9, 1.1, n_bins)
        tt, vv, fk, ot = (
            np.maximum(n * shape * rng.uniform(0.85, 1.15, n_bins), 0.05) for n in (n_tt, n_vv, n_fk, n_ot)
        )
        jes = rng.uniform(0.03, 0.08, n_bins) * np.linspace(1.0, 1.5, n_bins)
        stat = f"staterror_{cname}"

        def histo(nom: np.ndarray, rel: np.ndarray) -> Spec:
            return {"hi_data": [_r(v) for v in nom * (1 + rel)], "lo_data": [_r(v) for v in nom * (1 - 0.9 * rel)]}

        samples = [
            {
                "name": "ttbar",
                "data": [_r(v) for v in tt],
                "modifiers": [
                    {"name": "mu_ttbar", "type": "normfactor", "data": None},
                    {"name": "lumi", "type": "lumi", "data": None},
                    {"name": "ttbar_theory", "type": "normsys", "data": {"hi": 1.08, "lo": 0.93}},
                    {"name": "MU_EFF", "type": "normsys", "data": {"hi": 1.025, "lo": 0.975}},
                    {"name": "JES", "type": "histosys", "data": histo(tt, jes)},
                    {"name": stat, "type": "staterror", "data": [_r(v) for v in 0.04 * tt + 0.3 * np.sqrt(tt)]},
                ],
            },
            {
                "name": "diboson",
                "data": [_r(v) for v in vv],
                "modifiers": [
                    {"name": "lumi", "type": "lumi", "data": None},
                    {"name": "diboson_xsec", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
                    {"name": "EL_EFF", "type": "normsys", "data": {"hi": 1.03, "lo": 0.97}},
                    {"name": "MU_EFF", "type": "normsys", "data": {"hi": 1.02, "lo": 0.98}},
                    {"name": "JES", "type": "histosys", "data": histo(vv, 0.8 * jes)},
                    {"name": stat, "type": "staterror", "data": [_r(v) for v in 0.05 * vv + 0.3 * np.sqrt(vv)]},
                ],
            },
            {
                "name": "fakes",
                "data": [_r(v) for v in fk],
                "modifiers": [{"name": "sf_fakes", "type": "shapefactor", "data": None}],
            },
            {
                "name": "other",
                "data": [_r(v) for v in ot],
                "modifiers": [
                    {"name": "lumi", "type": "lumi", "data": None},
                    {"name": f"shapesys_other_{cname}", "type": "shapesys", "data": [_r(0.25 * v) for v in ot]},
                ],
            },
        ]
        channels.append({"name": cname, "samples": samples})
        observations.append({"name": cname, "data": [float(v) for v in rng.poisson(tt + vv + fk + ot)]})

    return {
        "version": "1.0.0",
        "channels": channels,
        "observations": observations,
        "measurements": [
            {
                "name": "NormalMeasurement",
                "config": {
                    "poi": "mu_SIG",
                    "parameters": [
                        {
                            "name": "lumi",
                            "auxdata": [1.0],
                            "sigmas": [0.017],
                            "bounds": [[0.915, 1.085]],
                            "inits": [1.0],
                        }
                    ],
                },
            }
        ],
    }


def sized_workspace(
    n_channels: int = 10, n_bins: int = 12, n_samples: int = 4, n_systematics: int = 60, seed: int = 0
) -> Spec:
    """A background-only workspace of a chosen size, for benchmarks at both ends of the size range.

    ``n_channels`` channels (the first half named ``SR*``) of ``n_bins`` bins,
    ``n_samples`` samples each.  Every sample carries ``lumi``; sample 0 a
    normfactor; each sample a random third of the ``n_systematics`` shared
    systematics as normsys and another third as histosys; each channel one
    ``staterror`` (a gamma per bin; normfactor and staterror only where more
    than one channel or bin can measure them).  The defaults give ~185 parameters and 120
    bins (~250 with :func:`signal_patchset`'s signal).  ``sized_workspace(1, 1,
    1, 1)`` is a simplified likelihood with 3 parameters with signal (POI,
    lumi, one systematic): a workspace reinterpretation tools evaluate by the
    thousand.
    """
    rng = np.random.default_rng(seed)
    n_sr = max(1, n_channels // 2)
    channels, observations = [], []
    systs = [f"syst_{k}" for k in range(n_systematics)]
    for c in range(n_channels):
        name = f"SR_{c}" if c < n_sr else f"CR_{c}"
        base = rng.uniform(20, 200) * np.exp(-np.linspace(0, 2, n_bins))
        samples, total = [], np.zeros(n_bins)
        for k in range(n_samples):
            nom = np.clip(base * rng.uniform(0.2, 1.0) * np.exp(rng.normal(0, 0.1, n_bins)), 0.5, None)
            total += nom
            mods: list[Spec] = [{"name": "lumi", "type": "lumi", "data": None}]
            if k == 0 and n_channels > 1:  # a free background norm needs a control region to be measured
                mods.append({"name": "mu_bkg", "type": "normfactor", "data": None})
            chosen = rng.permutation(n_systematics)
            third = max(1, n_systematics // 3)
            for j in chosen[:third]:
                up = rng.uniform(0.01, 0.08)
                mods.append(
                    {
                        "name": systs[j],
                        "type": "normsys",
                        "data": {"hi": _r(1 + up), "lo": _r(1 - up * rng.uniform(0.7, 1.3))},
                    }
                )
            for j in chosen[third : 2 * third] if n_systematics > 1 else []:
                shift = rng.uniform(0.01, 0.06) * np.linspace(-1, 1, n_bins) * nom
                mods.append(
                    {
                        "name": systs[j],
                        "type": "histosys",
                        "data": {
                            "hi_data": [_r(v) for v in nom + shift],
                            "lo_data": [_r(v) for v in nom - 0.9 * shift],
                        },
                    }
                )
            if n_bins > 1 or n_samples > 1:
                mods.append({"name": f"staterror_{name}", "type": "staterror", "data": [_r(v) for v in 0.05 * nom]})
            samples.append({"name": f"bkg_{k}", "data": [_r(v) for v in nom], "modifiers": mods})
        channels.append({"name": name, "samples": samples})
        observations.append({"name": name, "data": [float(v) for v in rng.poisson(total)]})
    return {
        "version": "1.0.0",
        "channels": channels,
        "observations": observations,
        "measurements": [
            {
                "name": "meas",
                "config": {
                    "poi": "mu_SIG",
                    "parameters": [
                        {
                            "name": "lumi",
                            "auxdata": [1.0],
                            "sigmas": [0.017],
                            "bounds": [[0.915, 1.085]],
                            "inits": [1.0],
                        },
                        {"name": "mu_SIG", "bounds": [[0.0, 10.0]], "inits": [1.0]},
                    ],
                },
            }
        ],
    }


def scaled_sample(sample: Spec, factor: float) -> Spec:
    """A copy of ``sample`` with its yields scaled as a whole: the nominal and, with it, the histosys
    templates and the absolute (staterror, shapesys) uncertainties; relative modifiers stay.

    Scaling the nominal alone would leave templates that no longer bracket it: on a 1Lbb signal
    (~75 histosys) the fit could then shed the excess along many directions at once, a flat,
    degenerate likelihood that pyhf's SLSQP stops short on and MINUIT gives up on."""
    out = json.loads(json.dumps(sample))
    out["data"] = [v * factor for v in out["data"]]
    for m in out["modifiers"]:
        if m["type"] == "histosys":
            m["data"] = {key: [v * factor for v in m["data"][key]] for key in ("hi_data", "lo_data")}
        elif m["type"] in ("staterror", "shapesys"):
            m["data"] = [v * factor for v in m["data"]]
    return out


def full_workspace(bkg_spec: Spec, patchset: Spec, name: str) -> Spec:
    """The full workspace of one hypothesis, as pyhf's PatchSet applies it."""
    import pyhf  # here, not at the top: the rest of this module is plain numpy (benchmark children import it)

    return dict(pyhf.PatchSet(patchset).apply(pyhf.Workspace(bkg_spec), name))


def example_files(grid: int = 5, seed: int = 0) -> dict[str, Spec]:
    """The three example files: BkgOnly.json, patchset.json and single.json.

    ``single.json`` is the grid's middle point applied to the background, for
    the single-hypothesis path.
    """
    bkg = example_workspace(seed=seed)
    ps = signal_patchset(
        bkg,
        default_grid(grid, grid),
        seed=seed,
        description=f"Synthetic {grid}x{grid} signal grid for the fitserve example workspace (seed {seed})",
    )
    middle = ps["patches"][len(ps["patches"]) // 2]["metadata"]["name"]
    return {"BkgOnly.json": bkg, "patchset.json": ps, "single.json": full_workspace(bkg, ps, middle)}


def dumps(obj: Any) -> str:
    """Canonical JSON text for the files we write (compact, one entry a line)."""
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_example(outdir: str | Path, grid: int = 5, seed: int = 0) -> list[Path]:
    """Write the example files into ``outdir`` (created if needed)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, obj in example_files(grid, seed).items():
        path = outdir / fname
        path.write_text(dumps(obj))
        written.append(path)
    return written
