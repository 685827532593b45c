"""Regenerate ``toys_pyhf.json``: pyhf's ToyCalculator on three small models (~1 min).

    python tests/engine/references/make_toys_pyhf.py

pyhf 0.7.6 (numpy backend, default SciPy fit), ``N_TOYS`` toys per
distribution, ``np.random.seed(0)``.  pyhf's own ``expected_pvalues`` fails
under numpy 2 (its percentile call), so its steps are reproduced: the two
distributions from ``ToyCalculator.distributions``, the observed test
statistic from ``teststatistic``, p-values from ``EmpiricalDistribution.pvalue``
(``pvalues``) and the band as the percentiles of the CLs (q0: CLsb) values of
the background-only toys.  The distributions are stored (6 significant
digits) so that the tests can judge agreement by the Monte Carlo uncertainty
of both samples (tests/engine/test_toys.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyhf

HERE = Path(__file__).resolve().parent
N_TOYS = 2000
BAND = [2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681]


def one_bin(sig: float, bkg: float, err: float, obs: float) -> dict:
    return {
        "channels": [
            {
                "name": "singlechannel",
                "samples": [
                    {
                        "name": "signal",
                        "data": [sig],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": [bkg],
                        "modifiers": [{"name": "uncorr_bkguncrt", "type": "shapesys", "data": [err]}],
                    },
                ],
            }
        ],
        "observations": [{"name": "singlechannel", "data": [obs]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def two_bin_histosys() -> dict:
    return {
        "channels": [
            {
                "name": "singlechannel",
                "samples": [
                    {
                        "name": "signal",
                        "data": [30.0, 95.0],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": [100.0, 150.0],
                        "modifiers": [
                            {
                                "name": "bkg_norm",
                                "type": "histosys",
                                "data": {"lo_data": [98.0, 100.0], "hi_data": [102.0, 190.0]},
                            }
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "singlechannel", "data": [120.0, 180.0]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


#: name -> (workspace, test statistic, POI value); the first is pyhf's validation case 1bin_shapesys_q0_toys
CASES = {
    "1bin_shapesys_q0_toys": (one_bin(25.0, 50.0, 7.0, 80.0), "q0", 0.0),
    "1bin_shapesys_qtilde": (one_bin(10.0, 50.0, 7.0, 55.0), "qtilde", 1.0),
    "2bin_histosys_qtilde": (two_bin_histosys(), "qtilde", 1.0),
}


def main() -> None:
    warnings.filterwarnings("ignore")
    pyhf.set_backend("numpy")
    out = {"pyhf_version": pyhf.__version__, "n_toys": N_TOYS, "seed": 0, "cases": {}}
    for name, (spec, test_stat, mu) in CASES.items():
        ws = pyhf.Workspace(spec)
        model = ws.model()
        data = ws.data(model)
        np.random.seed(0)
        calc = pyhf.infer.calculators.ToyCalculator(
            data, model, test_stat=test_stat, ntoys=N_TOYS, track_progress=False
        )
        q_obs = float(calc.teststatistic(mu))
        sb, b = calc.distributions(mu)
        clsb, clb, cls = (float(v) for v in calc.pvalues(q_obs, sb, b))
        per_toy = np.array([[float(v) for v in calc.pvalues(q, sb, b)] for q in b.samples])  # [N, (CLsb, CLb, CLs)]
        exp = np.percentile(per_toy[:, 0 if test_stat == "q0" else 2], BAND)
        out["cases"][name] = {
            "workspace": spec,
            "test_stat": test_stat,
            "poi_test": mu,
            "q_obs": q_obs,
            "CLs_obs": clsb if test_stat == "q0" else cls,
            "CLsb_obs": clsb,
            "CLb_obs": clb,
            "CLs_exp": [float(v) for v in exp],
            "q_sb": [float(f"{v:.6g}") for v in np.asarray(sb.samples)],
            "q_b": [float(f"{v:.6g}") for v in np.asarray(b.samples)],
        }
        print(name, out["cases"][name]["CLs_obs"], out["cases"][name]["CLs_exp"], flush=True)
    (HERE / "toys_pyhf.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
