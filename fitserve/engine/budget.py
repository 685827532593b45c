"""What a scan will build, and how much memory fitting it takes, computed without fitting.

The service refuses a job at submission when the padded model of one of its
chunks would be too large (issue #17: patches that cannot be aligned by role pad
to the *union* of their parameters), and the engine narrows batches that would
not fit a memory budget.  Both use the numbers here, so what is refused and
what is run agree.

:func:`plan` parses and groups the hypotheses as :func:`fitserve.engine.model.compile_hypotheses`
does, but only counts the union structure (no padded arrays are built), then
estimates the peak bytes of fitting one batch from the shapes the fit allocates.

The estimate, per fitted row (one hypothesis x one of ``ROWS`` fits vmapped together)::

    8 bytes x (C_PP P^2 + C_SBP SB P + C_BP B P + C_K3 SB Km^3 + C_SBK SB (Km + Kh) + C_P P)

``P`` padded parameters, ``B`` bins, ``SB`` (slot, bin) pairs, ``Km`` / ``Kh`` the
widths of the multiplicative / histosys index tables.  The terms are what
:func:`fitserve.engine.likelihood.value_grad_hess` and :func:`fitserve.engine.fit.minimize`
hold at once: the Hessian, its damped copy, its Cholesky factor, the cross terms
``t1..t3`` and the ``(P+1)^2`` scatter target of ``own_m`` (P x P each); the dense
``[SB, P]`` derivative matrices ``d_a, g_n, d_m, d_r`` and the ``[B, P]`` Jacobian;
the ``[SB, K, K, K]`` temporary of the leave-two-out products.  The constants
were fitted to peak RSS measured on the union blow-up probe (P = 166..646) and
on a 3L-RJ chunk, then multiplied by :data:`SAFETY`.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from fitserve.engine.model import background_names, group_hypotheses, parse_hypothesis

#: fits vmapped per hypothesis in one compiled call (fitserve.engine.infer.ROWS)
ROWS = 3
#: matrices of each shape alive at the peak of one Newton step (fitted to measured RSS)
C_PP, C_SBP, C_BP, C_K3, C_SBK, C_P = 12.0, 8.0, 2.0, 2.0, 4.0, 40.0
#: the estimate is multiplied by this (XLA's buffer reuse varies with the shapes)
SAFETY = 1.5
#: per-process memory the fit needs besides the batch (JAX, XLA, compiled code), bytes
BASE_BYTES = 600 * 2**20


@dataclass(frozen=True)
class GroupPlan:
    """One structure group of one chunk: what the engine pads, compiles and fits."""

    names: tuple[str, ...]
    n_params: int  # P: padded (union) scalar parameters
    n_bins: int  # B
    n_sb: int  # SB: (sample slot, bin) pairs
    k_mult: int  # Km: widest multiplicative-factor list of a (slot, bin)
    k_histosys: int  # Kh
    width: int  # hypotheses fitted together in one batch
    peak_bytes: int  # estimated peak of fitting one batch of ``width``
    signature: str  # what fixes the compiled code (structure and width)


@dataclass
class JobPlan:
    """Every group of every chunk of a job, and the totals the service limits."""

    groups: list[GroupPlan] = field(default_factory=list)
    #: structure groups of the whole job (channel layouts, POI, conflicting parameter definitions):
    #: each is compiled separately however the job is chunked
    structure_groups: int = 0

    @property
    def compilations(self) -> int:
        """Distinct compiled fits the job needs (structure x batch width)."""
        return len({g.signature for g in self.groups})

    def largest(self, attr: str) -> GroupPlan | None:
        return max(self.groups, key=lambda g: getattr(g, attr), default=None)


def row_bytes(n_params: int, n_bins: int, n_sb: int, k_mult: int = 1, k_histosys: int = 1) -> float:
    """Estimated bytes one fitted row holds at the peak of a Newton step (before SAFETY)."""
    p, b, sb = n_params, n_bins, n_sb
    return 8.0 * (C_PP * p * p + C_SBP * sb * p + C_BP * b * p + C_K3 * sb * k_mult**3
                  + C_SBK * sb * (k_mult + k_histosys) + C_P * p)


def batch_bytes(width: int, n_params: int, n_bins: int, n_sb: int, k_mult: int = 1, k_histosys: int = 1) -> int:
    """Estimated peak bytes of fitting one batch of ``width`` hypotheses (SAFETY included)."""
    return int(SAFETY * width * ROWS * row_bytes(n_params, n_bins, n_sb, k_mult, k_histosys))


def max_width(n_params: int, n_bins: int, n_sb: int, budget_bytes: int, k_mult: int = 1, k_histosys: int = 1) -> int:
    """The widest batch (hypotheses fitted together) whose estimated peak fits ``budget_bytes``.

    0 when not even one hypothesis fits: the caller must refuse (the service does
    so at submission) rather than run it.  Monotonic in every argument.
    """
    per = batch_bytes(1, n_params, n_bins, n_sb, k_mult, k_histosys)
    return int(budget_bytes // per) if per > 0 else 1 << 30


def batch_budget() -> int:
    """Memory one batch may use: ``FITSERVE_BATCH_MEMORY_BYTES``, else a quarter of physical memory."""
    raw = os.environ.get("FITSERVE_BATCH_MEMORY_BYTES")
    if raw and raw.strip().isdigit():
        return int(raw)
    return physical_memory() // 4


def physical_memory() -> int:
    """Bytes of RAM of this machine (cgroup limit when lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


def width_for(n: int, n_params: int, n_bins: int, n_sb: int, budget_bytes: int | None = None,
              k_mult: int = 1, k_histosys: int = 1) -> int:
    """The batch width the engine uses for a group of ``n`` hypotheses under ``budget_bytes``.

    ``batch_size(n)``, narrowed to :func:`max_width` (at least 1) when that does not fit.
    """
    from fitserve.engine.scan import batch_size

    size = batch_size(n)
    if budget_bytes is None:
        return size
    return max(1, min(size, max_width(n_params, n_bins, n_sb, budget_bytes, k_mult, k_histosys)))


def _group_dims(parsed: Sequence[Any]) -> dict[str, Any]:
    """Union dimensions of a group of parsed hypotheses, as build_batched_model pads them."""
    channels = parsed[0].channels
    nb_of = dict(channels)
    union: dict[str, int] = {}
    for p in parsed:
        for k, ps in p.params.items():
            union.setdefault(k, ps.n)
    slots = sorted({s for p in parsed for s in p.samples})
    mult: dict[tuple[str, str], set[str]] = {}
    hs: dict[tuple[str, str], set[str]] = {}
    ns: dict[tuple[str, str], set[str]] = {}
    for p in parsed:
        for key, slot in p.multiplicative:
            mult.setdefault(slot, set()).add(key)
        for key, slot in p.histosys:
            hs.setdefault(slot, set()).add(key)
        for key, slot in p.normsys:
            ns.setdefault(slot, set()).add(key)
    width = lambda table: max([len(v) for v in table.values()] + [1])  # noqa: E731
    sig = repr((channels, sorted(union.items()), slots, sorted((s, sorted(v)) for s, v in mult.items()),
                sorted((s, sorted(v)) for s, v in hs.items()), sorted((s, sorted(v)) for s, v in ns.items())))
    return {
        "n_params": sum(union.values()),
        "n_bins": sum(nb for _, nb in channels),
        "n_sb": sum(nb_of[ch] for ch, _ in slots),
        "k_mult": width(mult),
        "k_histosys": width(hs),
        "structure": hashlib.sha256(sig.encode()).hexdigest()[:16],
    }


def plan(
    workspace: dict[str, Any],
    patches: Sequence[dict[str, Any]] | None,
    options: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    budget_bytes: int | None = None,
) -> JobPlan:
    """The groups the engine will build for ``patches`` run in chunks of ``chunk_size`` (None: one chunk).

    Nothing is fitted or padded; inputs are assumed validated (the service did).
    ``budget_bytes``: the batch memory budget the engine narrows batches to
    (:func:`width_for`); None: today's ``batch_size`` widths.
    """
    from fitserve.engine.inputs import expand_hypotheses

    measurement = (options or {}).get("measurement")
    hyps = expand_hypotheses(workspace, patches, validate=False)
    bkg = background_names(workspace if patches is not None else None)
    parsed = [parse_hypothesis(h, bkg, measurement) for h in hyps]
    size = chunk_size or max(1, len(parsed))
    out = JobPlan(structure_groups=len(group_hypotheses(parsed)))
    for lo in range(0, len(parsed), size):
        chunk = parsed[lo: lo + size]
        for members in group_hypotheses(chunk):
            group = [chunk[i] for i in members]
            dims = _group_dims(group)
            structure = dims.pop("structure")
            width = width_for(len(group), budget_bytes=budget_bytes, **dims)
            out.groups.append(GroupPlan(
                names=tuple(p.name for p in group), width=width,
                peak_bytes=batch_bytes(width, **dims), signature=f"{structure}/{width}", **dims,
            ))
    return out


def model_width(model: Any, budget_bytes: int | None = None) -> int:
    """:func:`width_for` of a built :class:`~fitserve.engine.model.BatchedModel` (what scan.py calls).

    ``budget_bytes`` None: :func:`batch_budget`.
    """
    a, s = model.arrays, model.structure
    return width_for(model.n_hypotheses, model.n_params, a["observed"].shape[1], a["nominal"].shape[1],
                     batch_budget() if budget_bytes is None else budget_bytes,
                     k_mult=s["mult"].shape[1], k_histosys=s["hs_par"].shape[1])
