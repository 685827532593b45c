"""Jobs described in a few words, the same everywhere: ``fitserve jobs``, the job log, the web pages.

Plain functions of the stored (JSON) documents, importing nothing: the command
line uses them on what the API answered, without loading the service.
"""

from __future__ import annotations

from typing import Any


def options_text(opts: dict[str, Any]) -> str:
    """The options that tell jobs apart, short: ``qtilde mu=1 CL=95% limits atlas``.

    Shown by ``fitserve jobs`` (and the web pages use the same words), so a mu=0.5 job,
    a limits job and a default job no longer look the same; toy-based jobs say ``toys=N seed=S``.
    """
    if not opts:
        return "-"
    parts = [str(opts.get("test_stat", "qtilde"))]
    if opts.get("test_stat") != "q0":  # a discovery test is at mu = 0 whatever poi_test says
        parts.append(f"mu={opts.get('poi_test', 1.0):g}")
    parts.append(f"CL={100 * float(opts.get('confidence_level', 0.95)):g}%")
    if opts.get("limits"):
        parts.append("limits")
    if opts.get("cls_only"):
        parts.append("cls-only")
    ms = opts.get("modifier_settings", "atlas")
    parts.append(ms if isinstance(ms, str) else "custom-interp")
    if opts.get("measurement"):
        parts.append(f"measurement={opts['measurement']}")
    if opts.get("calculator") == "toybased":
        parts.append(f"toys={int(opts.get('n_toys', 1000))} seed={int(opts.get('seed', 0))}")
    else:
        parts.append("asymptotic")
    return " ".join(parts)
