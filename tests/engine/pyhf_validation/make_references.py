"""Make the fixtures (``cases/*.json``) and tight pyhf references (``references.json``) of pyhf's validation suite.

Not run by the tests (they only read the JSON).  Needs pyhf's sources (a git
checkout or bare git directory of scikit-hep/pyhf), pyhf, jax, iminuit,
pytest and, for the HistFactory XML inputs, uproot::

    PYTHONPATH=<dir with uproot> python tests/engine/pyhf_validation/make_references.py \\
        --pyhf-git-dir /path/to/pyhf/.git [--commit HEAD] [--starts 48]

What it does:

1. extracts ``tests/test_validation.py`` and ``validation/`` of that commit;
2. runs pyhf's own ``test_validation`` with its ``validate_hypotest`` replaced
   by a recorder, so every case is taken exactly as pyhf builds it (model spec,
   ``modifier_settings``, POI, data, test statistic, expected numbers,
   tolerance, calculator) and turned into a workspace (``pyhf.Workspace.build``);
3. takes the workspace and the ROOT numbers of
   ``test_shapesys_nuisparfilter_validation`` from the test's source (literals);
4. reads every top-level HistFactory XML configuration under ``validation/``
   with ``pyhf.readxml`` (one case per measurement);
5. computes references with pyhf: JAX backend, SciPy SLSQP at tolerance 1e-14
   (``tight``), Minuit as a cross-check (``minuit``), and the tight optimizer
   from many starting points for every fit (``global``: the lowest NLL of each
   fit is kept, hypotest is otherwise pyhf's own).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"
SCIPY_TOLERANCE = 1e-14
MINUIT_TOLERANCE = 1e-6
MINUIT_STRATEGY = 2
MULTISTART_MAXITER = 5000
#: cases whose fits pyhf's own tests say have several minima (the recorded number is a local one)
MULTIMODAL = {"2bin_2channel_coupledhistosys"}
#: dCLs between the tight reference and the multistart / Minuit answers above which a case is not well posed
WELL_POSED_DCLS = 1e-6
ATLAS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


# ---------------------------------------------------------------------------
# sources


def extract(git_dir: str, commit: str, dest: Path) -> str:
    sha = subprocess.check_output(["git", "--git-dir", git_dir, "rev-parse", commit], text=True).strip()
    tar = dest / "src.tar"
    with tar.open("wb") as fh:
        subprocess.check_call(
            ["git", "--git-dir", git_dir, "archive", sha, "tests/test_validation.py", "validation"], stdout=fh
        )
    with tarfile.open(tar) as tf:
        tf.extractall(dest, filter="data")
    return sha


def effective_codes(model) -> dict[str, dict[str, str]]:
    """The interpolation codes the model really uses (explicit, whatever the settings left to defaults)."""
    out = {}
    for kind in ("normsys", "histosys"):
        applier = model.main_model.modifiers_appliers.get(kind)
        code = getattr(applier, "interpcode", None) if applier is not None else None
        if code is None:  # no modifier of this kind: what the model would use
            code = (
                model.config.modifier_settings.get(kind, {}).get("interpcode")
                or {"normsys": "code1", "histosys": "code0"}[kind]
            )
        out[kind] = {"interpcode": code}
    return out


def workspace_of(pdf, data):
    """``pyhf.Workspace.build``, keeping the model spec's own parameter settings.

    ``Workspace.build`` (pyhf 0.7.6) writes only the bounds, inits and ``fixed``
    of each parameter: a ``lumi`` parameter's ``auxdata`` and ``sigmas`` from
    the model spec are lost (and the workspace's model cannot be built).
    """
    import pyhf

    ws = json.loads(json.dumps(dict(pyhf.Workspace.build(pdf, data, name="measurement"))))
    own = {p["name"]: p for p in pdf.spec.get("parameters", [])}
    for par in ws["measurements"][0]["config"]["parameters"]:
        par.update(copy.deepcopy(own.get(par["name"], {})))
    return pyhf.Workspace(ws)


def validation_cases(src: Path) -> list[dict]:
    """pyhf's ``test_validation`` cases, captured from pyhf's own test code."""
    import pytest

    captured: list[dict] = []

    class Recorder:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_call(self, item):
            mod = item.module

            def record(pdf, data, mu_test, expected_result, test_stat="q", tolerance=1e-6, calctype="asymptotics"):
                setup = item.funcargs["setup"]
                captured.append(
                    {
                        "id": item.callspec.id,
                        "pdf": pdf,
                        "data": list(map(float, data)),
                        "mu": mu_test,
                        "expected": expected_result,
                        "test_stat": test_stat,
                        "tolerance": tolerance,
                        "calctype": calctype,
                        "config": setup["expected"]["config"],
                    }
                )

            saved = mod.validate_hypotest
            mod.validate_hypotest = record
            try:
                yield
            finally:
                mod.validate_hypotest = saved

    cwd = os.getcwd()
    os.chdir(src)  # pyhf's fixtures open validation/data/... relative to its repository root
    try:
        rc = pytest.main(
            [
                str(src / "tests" / "test_validation.py") + "::test_validation",
                "-q",
                "-p",
                "no:cacheprovider",
                "--noconftest",
                f"--rootdir={src}",
            ],
            plugins=[Recorder()],
        )
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise SystemExit(f"pyhf's test_validation did not run cleanly (rc {rc})")

    cases = []
    for c in captured:
        pdf = c["pdf"]
        name = c["id"].replace("_mu1", "")  # pyhf's ids: 1bin_shapesys_mu1, 1bin_shapesys_q0_mu1_toys, ...
        ws = workspace_of(pdf, c["data"])
        codes = effective_codes(pdf)
        # the workspace must give back pyhf's model and data
        model = ws.model(modifier_settings=codes, poi_name=pdf.config.poi_name)
        assert model.config.par_order == pdf.config.par_order, name
        assert list(map(float, ws.data(model))) == c["data"], name
        x = pdf.config.suggested_init()
        assert float(model.logpdf(x, ws.data(model))[0]) == float(pdf.logpdf(x, c["data"])[0]), name
        case = {
            "name": name,
            "origin": {"file": "tests/test_validation.py", "test": f"test_validation[{c['id']}]"},
            "workspace": json.loads(json.dumps(dict(ws))),
            "measurement": "measurement",
            "poi_test": float(c["mu"]),
            "test_stat": c["test_stat"],
            "calctype": c["calctype"],
            "modifier_settings": codes,
            "n_pars": len(pdf.config.suggested_init()),
            "pyhf_recorded": {
                "CLs_obs": c["expected"]["obs"],
                "CLs_exp": list(c["expected"]["exp"]),
                "rtol": c["tolerance"],
                "what": "pyhf's expected_result_* fixture",
            },
        }
        if c["calctype"] == "toybased":
            case["toys"] = {"ntoys": 2000, "numpy_seed": 0, "note": "pyhf.infer.hypotest defaults, np.random.seed(0)"}
        cases.append(case)
    return cases


def _literal(func: ast.FunctionDef, name: str):
    for node in func.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            tree = ast.Expression(node.value)
            for sub in ast.walk(tree):  # the test writes JSON's null as a local ``null = None``
                if isinstance(sub, ast.Name) and sub.id == "null":
                    sub.__class__, sub.value = ast.Constant, None
            return ast.literal_eval(tree.body)
    raise KeyError(name)


def nuisparfilter_case(src: Path) -> dict:
    tree = ast.parse((src / "tests" / "test_validation.py").read_text())
    func = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "test_shapesys_nuisparfilter_validation"
    )
    spec = _literal(func, "spec")
    ref = _literal(func, "reference_root_results")
    return {
        "name": "shapesys_nuisparfilter",
        "origin": {"file": "tests/test_validation.py", "test": "test_shapesys_nuisparfilter_validation"},
        "workspace": spec,
        "measurement": None,
        "poi_test": 1.0,
        "test_stat": "qtilde",
        "calctype": "asymptotics",
        "modifier_settings": ATLAS,  # ws.model(modifier_settings=code4/code4p) in the test
        "pyhf_recorded": {
            "CLs_obs": ref["CLs_obs"],
            "CLs_exp": ref["CLs_exp"],
            "atol": 1e-4,
            "rtol": 1e-5,
            "what": "ROOT's numbers (reference_root_results), pyhf's np.allclose tolerances",
        },
    }


#: pyhf's test_import_roundtrip ids of the XML inputs it round-trips
ROUNDTRIP = {
    "xmlimport_input/config/example.xml": "example-one",
    "xmlimport_input2/config/example.xml": "example-two",
    "xmlimport_input3/config/examples/example_ShapeSys.xml": "example-three",
}


def xml_cases(src: Path) -> tuple[list[dict], list[str]]:
    """Every top-level HistFactory configuration under validation/, one case per measurement."""
    import pyhf
    import pyhf.readxml

    cases, skipped = [], []
    val = src / "validation"
    for top in sorted(val.rglob("*.xml")):
        rel = top.relative_to(val).as_posix()
        text = top.read_text(errors="replace")
        if "<Combination" not in text:
            continue  # a channel file
        base = val / rel.split("/config/")[0]
        try:
            spec = pyhf.readxml.parse(top, base)
            pyhf.Workspace(spec)
        except Exception as exc:  # noqa: BLE001 -- recorded in the README
            skipped.append(f"{rel}: pyhf.readxml cannot read it ({type(exc).__name__}: {exc})")
            continue
        stem = rel.split("/config/")[0] + (
            "" if Path(rel).stem == "example" else "_" + Path(rel).stem.removeprefix("example_")
        )
        discovery = stem.endswith("_p0")
        for k, meas in enumerate(spec["measurements"]):
            name = "xml_" + stem + ("" if len(spec["measurements"]) == 1 else "_" + meas["name"])
            origin = {"file": f"validation/{rel}", "reader": "pyhf.readxml.parse", "measurement": meas["name"]}
            if rel in ROUNDTRIP and k == 0:
                origin["test"] = f"test_import_roundtrip[{ROUNDTRIP[rel]}]"
            cases.append(
                {
                    "name": name,
                    "origin": origin,
                    "workspace": spec,
                    "measurement": meas["name"],
                    "poi_test": 0.0 if discovery else 1.0,
                    "test_stat": "q0" if discovery else "qtilde",
                    "calctype": "asymptotics",
                    "modifier_settings": ATLAS,  # pyhf.Model's defaults since 0.7, as in test_import_roundtrip
                    "pyhf_recorded": None,
                }
            )
            poi = next((p for p in meas["config"]["parameters"] if p["name"] == meas["config"]["poi"]), None)
            if poi and "bounds" in poi and poi["bounds"][0][0] > 0:
                # pyhf (and fitserve) refuse qtilde / q0 here: 0 lies outside the POI's bounds; a variant
                # with the lower bound at 0 tests the rest of the model
                widened = copy.deepcopy(spec)
                wmeas = widened["measurements"][k]
                wpoi = next(p for p in wmeas["config"]["parameters"] if p["name"] == meas["config"]["poi"])
                wpoi["bounds"][0][0] = 0.0
                cases.append(
                    {
                        **copy.deepcopy(cases[-1]),
                        "name": name + "_poi_from_0",
                        "workspace": widened,
                        "origin": {
                            **origin,
                            "modified": f"POI {poi['name']!r} bounds {poi['bounds'][0]} -> "
                            f"{wpoi['bounds'][0]} (0 inside, as qtilde needs)",
                        },
                    }
                )
    return cases, skipped


# ---------------------------------------------------------------------------
# references


def model_and_data(case: dict):
    import pyhf

    ws = pyhf.Workspace(case["workspace"])
    model = ws.model(measurement_name=case["measurement"], modifier_settings=case["modifier_settings"])
    return model, ws.data(model)


def _f(x) -> float:
    return float(np.asarray(x))


def hypotest_record(case: dict) -> dict:
    """pyhf's hypotest and the free / fixed-POI fits of one case, with the optimizer now set."""
    import pyhf
    import pyhf.infer.test_statistics as ts  # its fit / fixed_poi_fit: pyhf's, or the multistart ones

    model, data = model_and_data(case)
    mu = 0.0 if case["test_stat"] == "q0" else case["poi_test"]
    obs, exp = pyhf.infer.hypotest(case["poi_test"], data, model, test_stat=case["test_stat"], return_expected_set=True)
    free, twice_free = ts.fit(data, model, return_fitted_val=True)
    fixed, twice_fixed = ts.fixed_poi_fit(mu, data, model, return_fitted_val=True)
    poi = model.config.poi_index
    return {
        "CLs_obs": _f(obs),
        "CLs_exp": [_f(v) for v in exp],
        "nll_free": _f(twice_free) / 2,
        "nll_fixed": _f(twice_fixed) / 2,
        "mu_hat": _f(np.asarray(free)[poi]),
        "free_pars": [float(v) for v in np.asarray(free)],
        "fixed_pars": [float(v) for v in np.asarray(fixed)],
    }


class Multistart:
    """Replace pyhf's fits inside hypotest by the lowest of many tight fits from spread starting points."""

    def __init__(self, n_starts: int, seed: int = 12):
        self.n_starts, self.seed = n_starts, seed
        self.spread: list[float] = []  # per fit: max - min of the NLLs reached (diagnostic)
        self.failed = 0

    def starts(self, pdf, init, bounds, fixed):
        rng = np.random.default_rng(self.seed)
        init = np.asarray(init, dtype=float)
        lo = np.array([b[0] for b in bounds], dtype=float)
        hi = np.array([b[1] for b in bounds], dtype=float)
        free = ~np.asarray(fixed, dtype=bool)
        yield init
        for k in range(self.n_starts):
            width = 1.0 if k % 2 else 3.0  # narrow and wide boxes around the suggested start
            box_lo, box_hi = np.maximum(lo, init - width), np.minimum(hi, init + width)
            x = init.copy()
            x[free] = rng.uniform(box_lo[free], box_hi[free])
            yield x

    def best(self, fn, args, pdf, init, bounds, fixed, kwargs):
        import pyhf

        init = pdf.config.suggested_init() if init is None else init
        bounds = pdf.config.suggested_bounds() if bounds is None else bounds
        fixed = pdf.config.suggested_fixed() if fixed is None else fixed
        results = []
        for x0 in self.starts(pdf, init, bounds, fixed):
            try:
                pars, twice = fn(*args, pdf, list(x0), bounds, fixed, return_fitted_val=True)
            except pyhf.exceptions.FailedMinimization:
                self.failed += 1
                continue
            results.append((_f(twice), pars))
        if not results:
            raise RuntimeError("every start failed")
        vals = [r[0] for r in results]
        self.spread.append(max(vals) - min(vals))
        twice, pars = min(results, key=lambda r: r[0])
        return (pars, twice) if kwargs.get("return_fitted_val") else pars

    def __enter__(self):
        import logging

        import pyhf.infer.calculators as calc
        import pyhf.infer.mle as mle
        import pyhf.infer.test_statistics as ts

        fit, fixed_poi_fit = mle.fit, mle.fixed_poi_fit  # pyhf.infer.mle itself stays as it is

        def ms_fit(data, pdf, init_pars=None, par_bounds=None, fixed_params=None, **kwargs):
            return self.best(fit, (data,), pdf, init_pars, par_bounds, fixed_params, kwargs)

        def ms_fixed(poi_val, data, pdf, init_pars=None, par_bounds=None, fixed_params=None, **kwargs):
            return self.best(fixed_poi_fit, (poi_val, data), pdf, init_pars, par_bounds, fixed_params, kwargs)

        self._saved = [
            (ts, "fit", ts.fit),
            (ts, "fixed_poi_fit", ts.fixed_poi_fit),
            (calc, "fixed_poi_fit", calc.fixed_poi_fit),
        ]
        ts.fit, ts.fixed_poi_fit, calc.fixed_poi_fit = ms_fit, ms_fixed, ms_fixed
        self._log = logging.getLogger("pyhf.optimize.mixins")
        self._level = self._log.level
        self._log.setLevel(logging.CRITICAL)  # failed starts are counted, not printed
        return self

    def __exit__(self, *exc):
        for mod, attr, value in self._saved:
            setattr(mod, attr, value)
        self._log.setLevel(self._level)


def grid_check(case: dict, n: int = 401) -> dict | None:
    """For a model with at most two free parameters: the lowest NLL on a dense grid over the bounds.

    The free fit's grid spans every free parameter, the fixed-POI fit's the
    others; the lowest grid point is then refined by the tight optimizer.
    Confirms that the multistart minima are the global ones.
    """
    import pyhf

    model, data = model_and_data(case)
    bounds = np.array(model.config.suggested_bounds(), dtype=float)
    init = np.array(model.config.suggested_init(), dtype=float)
    free = ~np.array(model.config.suggested_fixed(), dtype=bool)
    poi = model.config.poi_index
    if free.sum() > 2:
        return None
    mu = 0.0 if case["test_stat"] == "q0" else case["poi_test"]
    nll = jax_nll(model, data)
    out = {"points_per_axis": n}
    for label, fix_poi in (("nll_free", False), ("nll_fixed", True)):
        axes = [k for k in np.nonzero(free)[0] if not (fix_poi and k == poi)]
        grids = np.meshgrid(*[np.linspace(*bounds[k], n) for k in axes], indexing="ij")
        pts = np.tile(init, (grids[0].size, 1))
        if fix_poi:
            pts[:, poi] = mu
        for k, g in zip(axes, grids):
            pts[:, k] = g.ravel()
        vals = np.asarray(nll(pts))
        vals = np.where(np.isfinite(vals), vals, np.inf)
        x0 = pts[int(np.argmin(vals))]
        if fix_poi:
            _, twice = pyhf.infer.mle.fixed_poi_fit(mu, data, model, init_pars=list(x0), return_fitted_val=True)
        else:
            _, twice = pyhf.infer.mle.fit(data, model, init_pars=list(x0), return_fitted_val=True)
        out[label] = {"grid_min": float(vals.min()), "refined": _f(twice) / 2}
    return out


def jax_nll(model, data):
    import jax
    import pyhf

    pyhf.set_backend("jax", pyhf.optimize.scipy_optimizer(tolerance=SCIPY_TOLERANCE))
    d = pyhf.tensorlib.astensor(data)
    return jax.jit(jax.vmap(lambda x: -model.logpdf(x, d)[0]))


def drop_empty_bins(case: dict) -> tuple[dict, list[str]]:
    """The case with every bin removed whose samples are all zero and whose observation is zero.

    Such a bin adds nothing to the likelihood (Poisson(0 | 0) = 1, and pyhf
    fixes the gamma of a zero shapesys uncertainty), but pyhf's JAX backend
    gets a NaN gradient from it (0 * log 0) and every fit fails.  The
    reference of a case with empty bins is computed on this equivalent model.
    """
    ws = copy.deepcopy(case["workspace"])
    obs = {o["name"]: o for o in ws["observations"]}
    dropped = []
    for ch in ws["channels"]:
        n = len(ch["samples"][0]["data"])
        keep = [b for b in range(n) if obs[ch["name"]]["data"][b] != 0 or any(s["data"][b] != 0 for s in ch["samples"])]
        if len(keep) == n:
            continue
        dropped += [f"{ch['name']}[{b}]" for b in range(n) if b not in keep]
        pick = lambda xs: [xs[b] for b in keep]  # noqa: E731
        obs[ch["name"]]["data"] = pick(obs[ch["name"]]["data"])
        for smp in ch["samples"]:
            smp["data"] = pick(smp["data"])
            for mod in smp["modifiers"]:
                if mod["type"] in ("shapesys", "staterror"):
                    mod["data"] = pick(mod["data"])
                elif mod["type"] == "histosys":
                    mod["data"] = {k: pick(v) for k, v in mod["data"].items()}
    return {**case, "workspace": ws}, dropped


def nll_offset(full: dict, reduced: dict) -> float:
    """NLL(full) - NLL(reduced) at the suggested start (numpy backend; finite there).

    A constant when the empty bins' own parameters are fixed (pyhf fixes the
    gamma of a zero shapesys uncertainty): checked.
    """
    import pyhf

    pyhf.set_backend("numpy")
    m_full, d_full = model_and_data(full)
    m_red, d_red = model_and_data(reduced)
    for par in m_full.config.par_order:  # every parameter removed with the bins is a fixed one
        fixed_full = m_full.config.param_set(par).suggested_fixed
        fixed_red = m_red.config.param_set(par).suggested_fixed if par in m_red.config.par_order else []
        assert len(fixed_full) - len(fixed_red) == sum(fixed_full) - sum(fixed_red), par
    full_nll = -float(m_full.logpdf(m_full.config.suggested_init(), d_full)[0])
    red_nll = -float(m_red.logpdf(m_red.config.suggested_init(), d_red)[0])
    return full_nll - red_nll


def attempt(fn, case):
    """``fn(case)``, or ``{"error": ...}`` where pyhf's fits fail."""
    import pyhf

    try:
        return fn(case)
    except (pyhf.exceptions.FailedMinimization, RuntimeError, ValueError, pyhf.exceptions.InvalidModel) as exc:
        return {
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "refused": isinstance(exc, (ValueError, pyhf.exceptions.InvalidModel)),
        }


def max_dcls(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip([a["CLs_obs"], *a["CLs_exp"]], [b["CLs_obs"], *b["CLs_exp"]]))


def references(cases: list[dict], n_starts: int) -> dict:
    import pyhf

    out = {}
    for case in cases:
        name = case["name"]
        print(f"-- {name}", file=sys.stderr, flush=True)
        if case["calctype"] != "asymptotics":
            out[name] = {"calctype": case["calctype"], "note": "toy-based: only pyhf's recorded numbers (see the case)"}
            continue
        entry: dict = {}
        pyhf.set_backend("numpy")  # exactly pyhf's test: default backend and optimizer
        entry["pyhf_default"] = attempt(hypotest_record, case)
        if entry["pyhf_default"].get("refused"):  # pyhf cannot test it (e.g. 0 outside the POI's bounds)
            entry.update(
                pyhf_refuses=entry["pyhf_default"]["error"], multimodal=False, well_posed=False, reference=None
            )
            print(json.dumps(entry), file=sys.stderr, flush=True)
            out[name] = entry
            continue
        full = case
        case, dropped = drop_empty_bins(case)
        offset = 0.0
        if dropped:
            offset = nll_offset(full, case)
            entry["reference_model"] = (
                "the case's workspace less its empty bins "
                + ", ".join(dropped)
                + " (pyhf's JAX fits get NaN gradients from them); their constant "
                f"NLL {offset:.17g} (the fixed gammas' constraints) is added back"
            )
        rec = case.get("pyhf_recorded")
        if rec and "error" not in entry["pyhf_default"]:
            rtol, atol = rec.get("rtol", 0.0), rec.get("atol", 0.0)
            pairs = zip(
                [rec["CLs_obs"], *rec["CLs_exp"]], [entry["pyhf_default"]["CLs_obs"], *entry["pyhf_default"]["CLs_exp"]]
            )
            entry["pyhf_default"]["reproduces_recorded"] = all(abs(a - b) <= atol + rtol * abs(a) for a, b in pairs)
        pyhf.set_backend("jax", pyhf.optimize.scipy_optimizer(tolerance=SCIPY_TOLERANCE))
        entry["tight"] = attempt(hypotest_record, case)
        pyhf.set_backend("jax", pyhf.optimize.minuit_optimizer(tolerance=MINUIT_TOLERANCE, strategy=MINUIT_STRATEGY))
        entry["minuit"] = attempt(hypotest_record, case)
        # a start that wanders off (negative yields: NaN) would otherwise run pyhf's 100000 iterations
        pyhf.set_backend("jax", pyhf.optimize.scipy_optimizer(tolerance=SCIPY_TOLERANCE, maxiter=MULTISTART_MAXITER))
        with Multistart(n_starts) as ms:
            entry["global"] = attempt(hypotest_record, case)
        if "error" not in entry["global"]:
            entry["global"]["starts_per_fit"] = n_starts + 1
            entry["global"]["failed_starts"] = ms.failed
            entry["global"]["max_nll_spread"] = max(ms.spread) / 2  # NLL (not twice) spread between starts of one fit
            grid = attempt(grid_check, case)
            if grid:
                entry["global"]["grid_check"] = grid
        for k in ("tight", "minuit", "global"):
            if "error" not in entry[k]:
                entry[k]["nll_free"] += offset
                entry[k]["nll_fixed"] += offset
        if any("error" in entry[k] for k in ("tight", "minuit", "global")):
            entry["multimodal"], entry["well_posed"], entry["reference"] = False, False, None
            print(json.dumps({k: v.get("error") for k, v in entry.items()}), file=sys.stderr, flush=True)
            out[name] = entry
            continue
        entry["dcls_tight_global"] = max_dcls(entry["tight"], entry["global"])
        entry["dcls_tight_minuit"] = max_dcls(entry["tight"], entry["minuit"])
        entry["dnll_free_tight_global"] = entry["tight"]["nll_free"] - entry["global"]["nll_free"]
        entry["multimodal"] = name in MULTIMODAL or entry["dcls_tight_global"] > WELL_POSED_DCLS
        entry["well_posed"] = not entry["multimodal"] and entry["dcls_tight_minuit"] <= 1e-4
        entry["reference"] = "global" if entry["multimodal"] else "tight"
        print(json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)}), file=sys.stderr, flush=True)
        out[name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pyhf-git-dir", required=True)
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--starts", type=int, default=48, help="extra starting points per fit of the multistart search")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()

    import iminuit
    import jax
    import pyhf
    import scipy

    jax.config.update("jax_enable_x64", True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        sha = extract(args.pyhf_git_dir, args.commit, src)
        cases = validation_cases(src) + [nuisparfilter_case(src)]
        more, skipped = xml_cases(src)
        cases += more
    if args.only:
        cases = [c for c in cases if c["name"] in args.only]
    CASES.mkdir(exist_ok=True)
    for case in cases:
        case = {"pyhf_commit": sha, **case}
        (CASES / f"{case['name']}.json").write_text(json.dumps(case, indent=1) + "\n")
    refs = references(cases, args.starts)
    path = HERE / "references.json"
    old = json.loads(path.read_text())["cases"] if (path.exists() and args.only) else {}
    doc = {
        "pyhf_commit": sha,
        "versions": {
            "pyhf": pyhf.__version__,
            "jax": jax.__version__,
            "scipy": scipy.__version__,
            "iminuit": iminuit.__version__,
            "python": sys.version.split()[0],
        },
        "tight": {"backend": "jax (64b)", "optimizer": "scipy SLSQP", "tolerance": SCIPY_TOLERANCE},
        "minuit": {
            "backend": "jax (64b)",
            "optimizer": "minuit",
            "tolerance": MINUIT_TOLERANCE,
            "strategy": MINUIT_STRATEGY,
        },
        "global": {
            "backend": "jax (64b)",
            "optimizer": "scipy SLSQP",
            "tolerance": SCIPY_TOLERANCE,
            "method": "every fit of pyhf's hypotest from the suggested start and --starts random ones "
            "(uniform in boxes of half-width 1 and 3 around it, inside the bounds); lowest NLL kept",
        },
        "nll_convention": "nll = pyhf twice_nll / 2 (fitserve's nll_free / nll_fixed)",
        "skipped_xml": skipped,
        "cases": {**old, **refs},
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(cases)} cases, references in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
