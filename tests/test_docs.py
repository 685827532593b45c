"""The README and the analyst guide, run as written: every command and script, in order, against a fresh `fitserve up`.

How a document becomes one bash script (``doc_script``):

* fenced ``bash``/``sh`` blocks: each line is a command;
* ``console`` blocks: lines starting with ``$ `` are commands; the lines after one are its
  pasted output, and a command whose output starts with ``fitserve: error:`` must fail; one
  commented ``# may fail`` (it races with the service) may do either;
* ``python`` blocks: written to the file named by a first-line comment (``# analysis.py``),
  which a later ``$ python analysis.py`` runs; without that comment they run at once;
* ``(./)quickstart.sh`` and ``fitserve up`` start in the background, the script waits for a worker;
* a block right after ``<!-- illustrative ... -->`` is skipped (synopses with placeholders,
  the install itself, which CI does in .ci/run); so is any block using ``../shared`` when that
  is absent.

To keep other engineers' services and the repository out of it, the test runs in a
temporary directory (the repository's ``workspaces`` and ``quickstart.sh`` linked into it),
rewrites ``/tmp/guide`` to a temporary path and port 8000 (``:8000``, ``--port 8000``) to a free one. A ``fitserve up``
line starts in the background and is waited for; ``./quickstart.sh`` runs for real with
``QUICKSTART_NO_INSTALL=1`` (this environment's fitserve). Outputs are not compared (ids and
timings differ); exit codes are.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fitserve.service.localhost import free_port
from fitserve.service.redis_server import find_redis_binary

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_redis_binary() is None, reason="no redis-server binary")]

FENCE = re.compile(r"^```(\w*)\s*$")
ILLUSTRATIVE = "<!-- illustrative"


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of each fenced block not marked illustrative."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, body, j = m.group(1), [], i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            body.append(lines[j])
            j += 1
        before = "\n".join(lines[max(0, i - 2) : i])
        if ILLUSTRATIVE not in before and not (not SHARED.exists() and "../shared" in "\n".join(body)):
            out.append((lang, body))
        i = j + 1
    return out


def _command(cmd: str, must_fail: bool, n: int) -> str:
    """One documented command in the script: run it in this shell (cd, variables stay), check its exit code."""
    show = shlex.quote(cmd)
    if re.match(r"([A-Z_]+=\S*\s+)*((\./)?quickstart\.sh|fitserve up)\b", cmd):
        return f"echo '::: '{show}\n(\n{cmd}\n) > up-{n}.log 2>&1 &\nUP_PIDS=\"$UP_PIDS $!\"\nwait_up up-{n}.log\n"
    if "# may fail" in cmd:  # documented as racing with the service (e.g. a cancel of a job that may be done)
        return f"echo '::: '{show}\n{cmd}\n"
    check = (
        'if [ "$rc" = 0 ]; then echo "::: expected a failure"; exit 97; fi'
        if must_fail
        else 'if [ "$rc" != 0 ]; then echo "::: failed with $rc"; exit 98; fi'
    )
    return f"echo '::: '{show}\n{cmd}\nrc=$?\n{check}\n"


def doc_script(text: str) -> str:
    parts, n = [], 0
    for lang, body in blocks(text):
        if lang in ("bash", "sh"):
            for line in body:
                if line.strip() and not line.lstrip().startswith("#"):
                    n += 1
                    parts.append(_command(line, False, n))
        elif lang == "console":
            for k, line in enumerate(body):
                if line.startswith("$ "):
                    out = body[k + 1] if k + 1 < len(body) else ""
                    n += 1
                    parts.append(_command(line[2:], out.startswith("fitserve: error:"), n))
        elif lang == "python":
            first = body[0].strip() if body else ""
            code = "\n".join(body)
            if re.fullmatch(r"# [\w.-]+\.py", first):
                parts.append(f"cat > {first[2:]} <<'PYEOF'\n{code}\nPYEOF\n")
            else:
                n += 1
                parts.append(
                    f"echo '::: python block'\npython - <<'PYEOF'\n{code}\nPYEOF\n"
                    'rc=$?; if [ "$rc" != 0 ]; then echo "::: python block failed"; exit 98; fi\n'
                )
    return "\n".join(parts)


PRELUDE = r"""
set -u
UP_PIDS=""
stop_up() { for p in $UP_PIDS; do kill -TERM "$p" 2>/dev/null; done; wait; }
trap stop_up EXIT
wait_up() {  # until the service answers and has a worker
    for _ in $(seq 1 600); do
        if curl -sf "$FITSERVE_URL/v1/health" | grep -q '"status":"ok"'; then return 0; fi
        sleep 0.5
    done
    echo "::: fitserve up did not come up"; cat "$1"; exit 99
}
"""


def run_doc(doc: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    port = free_port()
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("workspaces", "quickstart.sh"):
        (work / name).symlink_to(REPO / name)
    (work / ".venv").symlink_to(
        Path(sys.executable).parents[1]
    )  # what the quickstart made: `source .venv/bin/activate`
    guide = tmp_path / "guide"
    text = (
        doc.read_text()
        .replace("/tmp/guide", str(guide))
        .replace(":8000", f":{port}")
        .replace("--port 8000", f"--port {port}")
    )
    assert "8000" not in "\n".join(line for _, body in blocks(text) for line in body), (
        "a port 8000 the test did not rewrite"
    )
    text = text.replace("./quickstart.sh", f"QUICKSTART_NO_INSTALL=1 PORT={port} ./quickstart.sh")
    script = PRELUDE + doc_script(text)
    (tmp_path / "doc.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        FITSERVE_URL=f"http://127.0.0.1:{port}",
        FITSERVE_WEB_WARMUP="off",
        VIRTUAL_ENV=str(Path(sys.executable).parents[1]),
    )
    if "FITSERVE_JAX_CACHE" in os.environ:
        env["FITSERVE_JAX_CACHE"] = os.environ["FITSERVE_JAX_CACHE"]
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "doc.sh")],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # fitserve up stops its worker and Redis
        out, err = proc.communicate(timeout=60)
        err += "\n::: timed out after 900 s"
    transcript = REPO / "test-output" / "docs" / f"{doc.stem}.log"  # what ran and what it printed, to read
    transcript.parent.mkdir(parents=True, exist_ok=True)
    transcript.write_text(f"{out}\n--- stderr\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _report(res: subprocess.CompletedProcess[str]) -> str:
    return f"rc={res.returncode}\n--- stdout (tail)\n{res.stdout[-6000:]}\n--- stderr (tail)\n{res.stderr[-4000:]}"


def test_readme_runs_as_written(tmp_path: Path) -> None:
    res = run_doc(REPO / "README.md", tmp_path)
    assert res.returncode == 0, _report(res)
    work = tmp_path / "clone"
    assert (work / "results" / "example.json").exists() and (work / "results" / "exclusion.png").exists()
    assert not (work / "results.json").exists()


def test_analyst_guide_runs_as_written(tmp_path: Path) -> None:
    res = run_doc(REPO / "docs" / "analyst-guide.md", tmp_path)
    assert res.returncode == 0, _report(res)
    guide = tmp_path / "guide"
    for name in ("cls.csv", "cls.json", "exclusion.png", "exclusion.pdf", "exclusion_limits.png"):
        assert (guide / name).exists(), name
