"""What a scan will build, and how much memory fitting it takes, computed without fitting.

The service refuses a job at submission when the padded model of one of its
chunks would be too large (issue #17: patches that cannot be aligned by role pad
to the *union* of their parameters), and the engine narrows batches that would
not fit a memory budget.  Both use the numbers here, so what is refused and
what is run agree.

:func:`plan` assigns role keys and groups the hypotheses as :func:`fitserve.engine.model.compile_hypotheses`
does (``_structure`` mirrors ``model.parse_hypothesis`` without reading any numbers; a test checks
that both agree), counts the union structure (no padded arrays are built), then
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
count those arrays; checked against peak RSS above an idle JAX process (union
blow-up P = 166, 326, 646 at width 16; one P = 2000 and one P = 5005 hypothesis;
a 3L-RJ chunk) the estimate with :data:`SAFETY` is 1.5-2.5x the measurement.
Recalibrate them when the fit's allocations change (docs/service.md, Limits).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from fitserve.engine.inputs import PER_BIN_PARAMETERS
from fitserve.engine.model import CONSTRAINT, background_names

#: fits vmapped per hypothesis in one compiled call (fitserve.engine.infer.ROWS)
ROWS = 3
#: matrices of each shape alive at the peak of one Newton step (fitted to measured RSS)
C_PP, C_SBP, C_BP, C_K3, C_SBK, C_P = 12.0, 8.0, 2.0, 2.0, 4.0, 40.0
#: Hypotheses whose tensors sit together on the device (at most).  Fits run on
#: a pool of lanes (:mod:`fitserve.engine.fit`) whose cost per hypothesis does
#: not grow with the batch, so a batch only needs to hold enough hypotheses to
#: keep the lanes busy; its width is a power of two so that few shapes compile.
MAX_BATCH = 128
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
    union_params: int = 0  # parameters of the union before shape buckets (what max_parameters limits)
    union_bins: int = 0


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
    return 8.0 * (
        C_PP * p * p
        + C_SBP * sb * p
        + C_BP * b * p
        + C_K3 * sb * k_mult**3
        + C_SBK * sb * (k_mult + k_histosys)
        + C_P * p
    )


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


def batch_size(n: int, max_batch: int | None = None) -> int:
    """One fixed batch width for ``n`` hypotheses: a power of two, few batches.

    All batches of a scan share it, so the fit compiles once per structure;
    padding hypotheses are never fitted (they only fill the device arrays).
    ``max_batch`` None: :data:`MAX_BATCH` as it is now (the benchmark varies it).
    """
    max_batch = MAX_BATCH if max_batch is None else max_batch
    n_batches = max(1, math.ceil(n / max_batch))
    per = math.ceil(n / n_batches)
    width = 1
    while width < per:
        width *= 2
    return min(width, max(max_batch, 1))


def width_for(
    n: int, n_params: int, n_bins: int, n_sb: int, budget_bytes: int | None = None, k_mult: int = 1, k_histosys: int = 1
) -> int:
    """The batch width the engine uses for a group of ``n`` hypotheses under ``budget_bytes``.

    ``batch_size(n)``, narrowed to :func:`max_width` (at least 1) when that does not fit.
    """
    size = batch_size(n)
    if budget_bytes is None:
        return size
    return max(1, min(size, max_width(n_params, n_bins, n_sb, budget_bytes, k_mult, k_histosys)))


_MULTIPLICATIVE = ("normfactor", "shapefactor", "lumi", "staterror", "shapesys")


@dataclass
class _Structure:
    """What of a parsed hypothesis fixes the padded shapes: ``model.parse_hypothesis`` without the numbers."""

    name: str
    channels: tuple[tuple[str, int], ...]
    poi_key: str
    params: dict[str, tuple[int, str | None]]  # role key -> (entries, constraint)
    alphas: set[str]  # keys of normsys / histosys parameters (the model puts them first, in a bucket of their own)
    slots: set[tuple[str, str]]
    entries: dict[str, set[tuple[str, tuple[str, str]]]]  # "mult" / "normsys" / "histosys" -> (key, slot)


def _modifiers(sample: dict[str, Any], cache: dict[int, tuple[tuple[str, str], ...]]) -> tuple[tuple[str, str], ...]:
    """(name, type) of a sample's modifiers; cached by object: copy-on-write patching shares untouched samples."""
    mods = cache.get(id(sample))
    if mods is None:
        mods = cache[id(sample)] = tuple((m["name"], m["type"]) for m in sample["modifiers"])
    return mods


def _structure(
    hyp: Any, bkg: tuple[set[tuple[str, str]], set[str]] | None, measurement: str | None, cache: dict[int, Any]
) -> _Structure:
    """Role keys, slots and modifier entries of one hypothesis, exactly as ``parse_hypothesis`` assigns them."""
    spec = hyp.spec
    meas = _measurement(spec, measurement)
    poi = meas.get("config", {}).get("poi")
    bkg_samples, bkg_params = bkg if bkg is not None else (set(), set())
    channels = tuple((ch["name"], len(ch["samples"][0]["data"])) for ch in spec["channels"])
    nbins = dict(channels)
    slot_of: dict[tuple[int, int], tuple[str, str]] = {}
    where_used: dict[str, set[tuple[str, str]]] = {}
    for ci, ch in enumerate(spec["channels"]):
        n_new = 0
        for si, smp in enumerate(ch["samples"]):
            if bkg is None or (ch["name"], smp["name"]) in bkg_samples:
                key = smp["name"]
            else:
                key, n_new = f"+new{n_new}", n_new + 1
            slot_of[(ci, si)] = (ch["name"], key)
            for name, _ in _modifiers(smp, cache):
                where_used.setdefault(name, set()).add((ch["name"], key))
    key_of: dict[str, str] = {}
    counters: dict[str, int] = {}
    params: dict[str, tuple[int, str | None]] = {}
    alphas: set[str] = set()
    entries: dict[str, set[tuple[str, tuple[str, str]]]] = {"mult": set(), "normsys": set(), "histosys": set()}
    for ci, ch in enumerate(spec["channels"]):
        for si, smp in enumerate(ch["samples"]):
            slot = slot_of[(ci, si)]
            for name, mtype in _modifiers(smp, cache):
                key = key_of.get(name)
                if key is None:
                    if bkg is None or name in bkg_params or name == poi:
                        key = name
                    else:
                        family = "alpha" if mtype in ("normsys", "histosys") else mtype
                        role = f"~{family}@" + ",".join(f"{c}/{k}" for c, k in sorted(where_used[name]))
                        k = counters.get(role, 0)
                        counters[role] = k + 1
                        key = f"{role}#{k}"
                    key_of[name] = key
                params.setdefault(key, (nbins[ch["name"]] if mtype in PER_BIN_PARAMETERS else 1, CONSTRAINT.get(mtype)))
                if mtype in ("normsys", "histosys"):
                    alphas.add(key)
                kind = "mult" if mtype in _MULTIPLICATIVE else mtype
                if kind in entries:
                    entries[kind].add((key, slot))
    return _Structure(hyp.name, channels, key_of.get(poi, str(poi)), params, alphas, set(slot_of.values()), entries)


def _measurement(spec: dict[str, Any], name: str | None) -> dict[str, Any]:
    measurements = spec.get("measurements") or [{}]
    return next((m for m in measurements if m.get("name") == name), measurements[0]) if name else measurements[0]


def _groups(structs: Sequence[_Structure]) -> list[list[int]]:
    """``model.group_hypotheses`` on structures: same layout and POI, no key defined two ways."""
    groups: list[tuple[tuple[Any, ...], dict[str, tuple[int, str | None]], list[int]]] = []
    for i, st in enumerate(structs):
        layout = (st.channels, st.poi_key)
        for lay, known, members in groups:
            if lay == layout and all(known.get(k, v) == v for k, v in st.params.items()):
                known.update(st.params)
                members.append(i)
                break
        else:
            groups.append((layout, dict(st.params), [i]))
    return [members for _, _, members in groups]


def _bucket() -> Any:
    """``model.bucket`` (shape buckets of padded dimensions), or no rounding with an engine without them."""
    from fitserve.engine import model

    return getattr(model, "bucket", lambda n, floor=1: max(int(n), floor, 1))


def _group_dims(structs: Sequence[_Structure]) -> dict[str, Any]:
    """Union dimensions of a group, as ``model.build_batched_model`` pads them."""
    channels = structs[0].channels
    nb_of = dict(channels)
    union: dict[str, int] = {}
    slots: set[tuple[str, str]] = set()
    per_slot: dict[str, dict[tuple[str, str], set[str]]] = {"mult": {}, "normsys": {}, "histosys": {}}
    for st in structs:
        for k, (n, _) in st.params.items():
            union.setdefault(k, n)
        slots |= st.slots
        for kind, table in per_slot.items():
            for key, slot in st.entries[kind]:
                table.setdefault(slot, set()).add(key)
    width = lambda kind: max([len(v) for v in per_slot[kind].values()] + [1])  # noqa: E731
    sig = repr(
        (
            channels,
            sorted(union.items()),
            sorted(slots),
            {kind: sorted((s, sorted(v)) for s, v in t.items()) for kind, t in per_slot.items()},
        )
    )
    alphas = set().union(*(st.alphas for st in structs))
    rnd = _bucket()
    # the model's layout: [alphas | multiplicative] parameters, each block and every padded
    # dimension rounded up to a shape bucket; histosys/normsys tables dense over the alphas
    n_alpha = rnd(len(alphas))
    return {
        "n_params": n_alpha + rnd(sum(n for k, n in union.items() if k not in alphas)),
        "n_bins": rnd(sum(nb for _, nb in channels)),
        "n_sb": rnd(sum(nb_of[ch] for ch, _ in slots)),
        "k_mult": rnd(width("mult")),
        "k_histosys": n_alpha,
        "union_params": sum(union.values()),
        "union_bins": sum(nb for _, nb in channels),
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

    hyps = expand_hypotheses(workspace, patches, validate=False)
    return plan_hypotheses(hyps, workspace if patches is not None else None, options, chunk_size, budget_bytes)


def plan_hypotheses(
    hypotheses: Sequence[Any],
    background: dict[str, Any] | None,
    options: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    budget_bytes: int | None = None,
) -> JobPlan:
    """:func:`plan` of hypotheses already patched (``inputs.Hypothesis``; ``background`` None: standalone)."""
    measurement = (options or {}).get("measurement")
    bkg = background_names(background)
    cache: dict[int, Any] = {}
    parsed = [_structure(h, bkg, measurement, cache) for h in hypotheses]
    size = chunk_size or max(1, len(parsed))
    out = JobPlan(structure_groups=len(_groups(parsed)))
    for lo in range(0, len(parsed), size):
        chunk = parsed[lo : lo + size]
        for members in _groups(chunk):
            group = [chunk[i] for i in members]
            dims = _group_dims(group)
            structure = dims.pop("structure")
            union = {"union_params": dims.pop("union_params"), "union_bins": dims.pop("union_bins")}
            width = width_for(len(group), budget_bytes=budget_bytes, **dims)
            out.groups.append(
                GroupPlan(
                    names=tuple(p.name for p in group),
                    width=width,
                    peak_bytes=batch_bytes(width, **dims),
                    signature=f"{structure}/{width}",
                    **dims,
                    **union,
                )
            )
    return out


def model_width(model: Any, budget_bytes: int | None = None) -> int:
    """:func:`width_for` of a built :class:`~fitserve.engine.model.BatchedModel` (what scan.py calls).

    ``budget_bytes`` None: :func:`batch_budget`.
    """
    a, s = model.arrays, model.structure
    mult = s.get("mult")
    return width_for(
        model.n_hypotheses,
        model.n_params,
        a["observed"].shape[1],
        a["nominal"].shape[1],
        batch_budget() if budget_bytes is None else budget_bytes,
        k_mult=mult.shape[1] if mult is not None and mult.ndim == 2 else 1,
        k_histosys=_width(a.get("hs_hi"), s.get("hs_par")),
    )


def _width(per_hypothesis: Any, shared: Any) -> int:
    """Width of the histosys table: ``hs_hi`` is ``[H, SB, Kh]`` (or the shared ``hs_par`` ``[S, Kh]``)."""
    for arr, ndim in ((per_hypothesis, 3), (shared, 2)):
        if arr is not None and getattr(arr, "ndim", 0) == ndim:
            return int(arr.shape[-1])
    return 1
