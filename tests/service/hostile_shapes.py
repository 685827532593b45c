"""Hostile job *shapes* (issue #17): small, valid submissions whose padded models are huge.

No pytest here: the probes in ``benchmarks``-style scripts import it too.

* :func:`union_blowup`: patch j adds ``k`` uniquely named normsys to a different subset of the
  background's 5 samples; each patch has k + 2 parameters, but the patches cannot be aligned by
  role, so the padded model of a chunk of c patches has P = c k + 2 parameters.
* :func:`group_explosion`: patch j adds a control channel with j + 1 bins: every patch is its own
  structure group (one compilation each).
"""

from __future__ import annotations

import itertools
from typing import Any

SAMPLES = 5


def five_sample_workspace() -> dict[str, Any]:
    """One signal region with 5 background samples (one bin), mu on nothing yet."""
    samples = [
        {
            "name": f"b{i}",
            "data": [10.0 + i],
            "modifiers": [{"name": f"b{i}_norm", "type": "normsys", "data": {"hi": 1.05, "lo": 0.95}}],
        }
        for i in range(SAMPLES)
    ]
    return {
        "channels": [{"name": "SR", "samples": samples}],
        "observations": [{"name": "SR", "data": [62.0]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def _patchset(patches: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "description": "hostile shape",
            "digests": {"sha256": "0" * 64},
            "labels": ["m"],
            "references": {"hepdata": "ins0000000"},
        },
        "patches": patches,
        "version": "1.0.0",
    }


def _signal(extra: list[dict[str, Any]] | None = None, value: float = 3.0) -> dict[str, Any]:
    return {
        "op": "add",
        "path": "/channels/0/samples/-",
        "value": {"name": "signal", "data": [value], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
    }


def union_blowup(k: int, n: int = 16, salt: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``n`` patches, each adding ``k`` normsys named ``p{j}_s{i}`` to its own subset of the samples.

    ``salt`` shifts the signal yields: the same structure without sharing cached results."""
    subsets = [c for r in range(1, SAMPLES + 1) for c in itertools.combinations(range(SAMPLES), r)]
    patches = []
    for j in range(n):
        subset = subsets[j % len(subsets)]
        ops = [_signal(value=3.0 + 0.1 * j + salt)]
        for s in subset:
            mods = [{"name": f"p{j}_s{i}", "type": "normsys", "data": {"hi": 1.02, "lo": 0.98}} for i in range(k)]
            for mod in mods:
                ops.append({"op": "add", "path": f"/channels/0/samples/{s}/modifiers/-", "value": mod})
        patches.append({"metadata": {"name": f"u{j}", "values": [float(j)]}, "patch": ops})
    return five_sample_workspace(), _patchset(patches, "union-blowup")


def group_explosion(n: int = 32) -> tuple[dict[str, Any], dict[str, Any]]:
    """``n`` patches, patch j adding a control region with j + 1 bins (n structure groups)."""
    patches = []
    for j in range(n):
        nb = j + 1
        ch = {
            "name": "CR",
            "samples": [
                {
                    "name": "cr_bkg",
                    "data": [20.0] * nb,
                    "modifiers": [{"name": "cr_norm", "type": "normfactor", "data": None}],
                }
            ],
        }
        ops = [
            _signal(value=3.0 + 0.1 * j),
            {"op": "add", "path": "/channels/-", "value": ch},
            {"op": "add", "path": "/observations/-", "value": {"name": "CR", "data": [21.0] * nb}},
        ]
        patches.append({"metadata": {"name": f"g{j}", "values": [float(j)]}, "patch": ops})
    return five_sample_workspace(), _patchset(patches, "group-explosion")


def wide_patch(n_params: int, n: int = 1, bins: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """``n`` patches each adding a signal with ``n_params - 1`` normsys of its own (P = n_params + 5 per model)."""
    patches = []
    for j in range(n):
        mods = [{"name": "mu", "type": "normfactor", "data": None}]
        mods += [
            {"name": f"w{j}_{i}", "type": "normsys", "data": {"hi": 1.01, "lo": 0.99}} for i in range(n_params - 1)
        ]
        op = {
            "op": "add",
            "path": "/channels/0/samples/-",
            "value": {"name": "signal", "data": [3.0 + 0.1 * j], "modifiers": mods},
        }
        patches.append({"metadata": {"name": f"w{j}", "values": [float(j)]}, "patch": [op]})
    return five_sample_workspace(), _patchset(patches, "wide")
