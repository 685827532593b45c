"""fitserve.engine.aot: traced kernels kept on disk per signature, loaded by later processes."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitserve.engine import aot

EXAMPLE = Path(__file__).parents[2] / "workspaces" / "example"

SCAN = """
import json, sys
from fitserve.engine.scan import scan
from fitserve.engine import aot
ws = json.load(open(sys.argv[1] + "/BkgOnly.json"))
patches = json.load(open(sys.argv[1] + "/patchset.json"))["patches"][:3]
out = scan(ws, patches, {}, validate=False)
print(json.dumps({"stats": aot.STATS, "results": out["results"]}, sort_keys=True))
"""


def _scan(cache: Path, **env: str) -> dict:
    e = {**os.environ, "FITSERVE_JAX_CACHE": str(cache), **env}
    proc = subprocess.run([sys.executable, "-c", SCAN, str(EXAMPLE)], capture_output=True, text=True, env=e)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_traced_fit_and_gets_the_same_numbers(tmp_path):
    first = _scan(tmp_path / "cache")
    assert first["stats"]["exported"] >= 2 and first["stats"]["loaded"] == 0 and first["stats"]["fallback"] == 0
    files = sorted((tmp_path / "cache" / "export").glob("*.jaxexport"))
    assert len(files) == first["stats"]["exported"]
    second = _scan(tmp_path / "cache")
    assert second["stats"]["loaded"] == first["stats"]["exported"] and second["stats"]["exported"] == 0
    assert second["results"] == first["results"]  # bit for bit: the same program
    plain = _scan(tmp_path / "plain", FITSERVE_AOT="0")
    assert plain["stats"] == {"exported": 0, "loaded": 0, "fallback": 0}
    assert not (tmp_path / "plain" / "export").exists()
    for name, rec in plain["results"].items():
        for key in ("CLs_obs", "CLs_exp"):
            np.testing.assert_allclose(rec[key], first["results"][name][key], rtol=1e-12, atol=1e-15)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    monkeypatch.setattr(aot, "_folder", lambda: tmp_path / "export")
    return tmp_path / "export"


def test_one_file_per_signature_and_static_argument(disk):
    @aot.exported_jit(static_argnames=("power",))
    def f(x, power):
        return x**power

    before = dict(aot.STATS)
    assert float(f(jnp.arange(3.0), power=2)[2]) == 4.0
    assert float(f(jnp.arange(4.0), power=2)[3]) == 9.0  # a new shape
    assert float(f(jnp.arange(4.0), power=3)[3]) == 27.0  # a new static argument
    assert float(f(jnp.arange(4.0), power=3)[2]) == 8.0  # seen: no new file
    assert aot.STATS["exported"] - before["exported"] == 3
    assert len(list(disk.glob("*.jaxexport"))) == 3


def test_a_corrupt_file_is_exported_again(disk):
    @aot.exported_jit()
    def g(x):
        return jnp.sin(x)

    x = jnp.linspace(0.0, 1.0, 5)
    expected = np.sin(np.asarray(x))
    np.testing.assert_allclose(g(x), expected)
    (path,) = disk.glob("*.jaxexport")
    path.write_bytes(b"not an export")

    @aot.exported_jit()
    def g(x):  # noqa: F811  (the same function, as a new process would define it)
        return jnp.sin(x)

    np.testing.assert_allclose(g(x), expected)
    assert path.read_bytes() != b"not an export"


@dataclass(frozen=True)
class _Unregistered:
    a: jax.Array


jax.tree_util.register_dataclass(_Unregistered, data_fields=["a"], meta_fields=[])


def test_a_pytree_without_serialisation_falls_back_to_jit(disk):
    @aot.exported_jit()
    def h(p):
        return p.a * 2

    before = aot.STATS["fallback"]
    np.testing.assert_allclose(h(_Unregistered(jnp.ones(2))), [2.0, 2.0])
    assert aot.STATS["fallback"] == before + 1
