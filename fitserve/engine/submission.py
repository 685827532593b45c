"""One submission check: a job's workspace, patchset and options, checked before anything is fitted.

:func:`check_submission` is what a caller that accepts jobs (the service's front
desk) asks of the engine: the workspace and patchset validated against pyhf's
schemas, each patch applied once and its model counted, the patch subset
selected, and the engine's own plan of the job (:func:`fitserve.engine.budget.plan_hypotheses`:
padded models, batch memory, structure groups, chunk by chunk as it will run)
held against the caller's :class:`SubmissionLimits`.  It returns a
:class:`PreparedJob`; anything wrong is an :class:`InputError` naming ``where``,
a limit passed is a :class:`LimitError` (an InputError naming the limit in
``limit``, so the caller can answer it its own way).

The limits are plain numbers: the engine knows nothing of who sets them.  Each
message names a limit by :meth:`SubmissionLimits.text` (``max_bins = 5000`` by
default; a caller passes ``texts`` to say how its users change one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from fitserve.engine.budget import JobPlan, plan_hypotheses
from fitserve.engine.errors import InputError, LimitError
from fitserve.engine.inputs import (
    PER_BIN_PARAMETERS,
    Hypothesis,
    apply_patch,
    check_measurement,
    check_values,
    expand_hypotheses,
    validate_patchset,
    validate_workspace,
)
from fitserve.engine.options import ScanOptions


@dataclass(frozen=True)
class SubmissionLimits:
    """What a caller accepts in one job; ``None``: no limit.

    ``chunk_size`` is how the caller will run the job (hypotheses per
    :func:`~fitserve.engine.run_chunk`; None: one chunk), ``batch_memory_bytes``
    the memory one batch of fits may take by the engine's estimate.  ``texts``:
    how each limit is named in messages (default ``name = value``).
    """

    max_hypotheses: int | None = None
    max_bins: int | None = None
    max_parameters: int | None = None
    max_structure_groups: int | None = None
    max_job_toys: int | None = None
    batch_memory_bytes: int | None = None
    chunk_size: int | None = None
    texts: Mapping[str, str] = field(default_factory=dict)

    def text(self, limit: str) -> str:
        """How ``limit`` is named in a message: ``texts[limit]``, else ``limit = value``."""
        return self.texts.get(limit) or f"{limit} = {getattr(self, limit)}"


@dataclass(frozen=True)
class PreparedJob:
    """A checked submission: what to store and run, in the job's order."""

    workspace: dict[str, Any]
    patches: list[dict[str, Any]] | None  # None: the workspace is the one hypothesis
    names: list[str]
    values: list[list[float]]
    options: ScanOptions
    labels: list[str] = field(default_factory=list)
    #: the patched hypotheses (each model checked) and the engine's plan of the job
    hypotheses: list[Hypothesis] = field(default_factory=list, repr=False)
    plan: JobPlan | None = field(default=None, repr=False)

    @property
    def options_doc(self) -> dict[str, Any]:
        """The options as stored (job meta, job hash) and hashed into every cache key: every field, JSON types."""
        return self.options.model_dump(mode="json")


def check_options(raw: Any, where: str = "options") -> tuple[ScanOptions, list[str] | None]:
    """Submitted options as :class:`ScanOptions` and the ``patches`` subset they name (None: every patch).

    InputError on anything wrong, naming the option (``options.poi_test``): a
    value no stored document may hold, an unknown or invalid option, a
    ``patches`` that is not a list of names.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError("options must be a JSON object", where=where)
    check_values(raw, where=where, dotted=True)
    raw = dict(raw)
    names = raw.pop("patches", None)
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise InputError("must be a list of patch names", where=f"{where}.patches")
    return ScanOptions.parse(raw, where=where), names


def model_size(spec: dict[str, Any]) -> tuple[int, int]:
    """``(bins, parameters)`` of a workspace, as pyhf's model would count them.

    Bins: all channels' bins.  Parameters: one per normfactor, normsys, histosys
    and lumi modifier name, one per bin for shapesys, staterror and shapefactor
    (per channel, as pyhf does).  Counting the JSON avoids building a pyhf
    model (seconds for large workspaces) just to refuse it.
    """
    bins = 0
    scalar: set[str] = set()
    per_bin: set[tuple[str, str]] = set()
    per_bin_count = 0
    for channel in spec.get("channels", []):
        samples = channel.get("samples", [])
        nbins = max((len(s.get("data", [])) for s in samples), default=0)
        bins += nbins
        for sample in samples:
            for mod in sample.get("modifiers", []):
                name, kind = mod.get("name"), mod.get("type")
                if kind in PER_BIN_PARAMETERS:
                    if (name, channel.get("name")) not in per_bin:
                        per_bin.add((name, channel.get("name")))
                        per_bin_count += nbins
                else:
                    scalar.add(name)
    return bins, len(scalar) + per_bin_count


def check_model_size(spec: dict[str, Any], limits: SubmissionLimits, where: str) -> None:
    """LimitError when a model has more bins or parameters than ``limits`` accept."""
    try:
        bins, params = model_size(spec)
    except (AttributeError, TypeError):
        return  # malformed: the schema validation that follows says what is wrong
    if limits.max_bins is not None and bins > limits.max_bins:
        raise LimitError(f"the model has {bins} bins, more than the limit {limits.text('max_bins')}", where, "max_bins")
    if limits.max_parameters is not None and params > limits.max_parameters:
        raise LimitError(
            f"the model has {params} parameters, more than the limit {limits.text('max_parameters')}",
            where,
            "max_parameters",
        )


def check_job_size(n: int, limits: SubmissionLimits, where: str = "patchset") -> None:
    """LimitError when a job has more hypotheses than ``limits.max_hypotheses``."""
    if limits.max_hypotheses is not None and n > limits.max_hypotheses:
        raise LimitError(
            f"{n} hypotheses in one job, more than the limit {limits.text('max_hypotheses')}; "
            "split the patchset over several jobs (options.patches selects a subset)",
            where,
            "max_hypotheses",
        )


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_plan(job_plan: JobPlan, names: list[str], limits: SubmissionLimits) -> None:
    """LimitError when what the engine would build for a chunk exceeds a limit.

    ``job_plan`` is :func:`fitserve.engine.budget.plan_hypotheses` of the job in its chunks: the
    padded (union) parameters and bins of each structure group, the estimated peak memory of one
    batch at the width the engine will use, and the structure groups of the whole job.
    """
    index = {n: i for i, n in enumerate(names)}
    chunk_size = limits.chunk_size or max(1, len(names))

    def where(group: Any) -> str:
        first = index.get(group.names[0], 0)
        lo = first - first % chunk_size
        return (
            f"patchset: patches {lo}..{min(lo + chunk_size, len(names)) - 1} (chunk of {chunk_size}, "
            f"structure group of {len(group.names)} from {group.names[0]!r})"
        )

    checks = (
        ("union_params", "max_parameters", limits.max_parameters, "parameters"),
        ("union_bins", "max_bins", limits.max_bins, "bins"),
    )
    for attr, limit, value, what in checks:
        g = job_plan.largest(attr)
        if value is not None and g is not None and getattr(g, attr) > value:
            raise LimitError(
                f"the padded model the engine builds for these patches has {getattr(g, attr)} {what} (the union "
                f"of the patches' {what}: patches whose new parameters cannot be aligned by role add up), more "
                f"than the limit {limits.text(limit)}; submit such patches in separate jobs or name their "
                "parameters consistently",
                where(g),
                limit,
            )
    budget = limits.batch_memory_bytes
    g = job_plan.largest("peak_bytes")
    if budget is not None and g is not None and g.peak_bytes > budget:
        raise LimitError(
            f"fitting one hypothesis of this padded model (P = {g.n_params} parameters in shape buckets, "
            f"{g.union_params} without; {g.n_sb} sample bins) "
            f"needs an estimated {_mb(g.peak_bytes)}, more than the batch memory budget {_mb(budget)} "
            f"({limits.text('batch_memory_bytes')})",
            where(g),
            "batch_memory_bytes",
        )
    n = job_plan.structure_groups
    if limits.max_structure_groups is not None and n > limits.max_structure_groups:
        raise LimitError(
            f"the patches form {n} structure groups (different channel layouts, each compiled separately), "
            f"more than the limit {limits.text('max_structure_groups')}; "
            "submit patches of one layout per job",
            "patchset",
            "max_structure_groups",
        )


def _check_toys(opts: ScanOptions, n_hypotheses: int, limits: SubmissionLimits) -> None:
    """LimitError when a toy-based job asks for more toys (both distributions) than ``max_job_toys``."""
    if opts.calculator != "toybased" or limits.max_job_toys is None:
        return
    toys = 2 * opts.n_toys * n_hypotheses
    if toys > limits.max_job_toys:
        raise LimitError(
            f"the job asks for {toys:,} toys ({opts.n_toys:,} per distribution, two distributions, "
            f"{n_hypotheses} hypotheses), more than the limit {limits.text('max_job_toys')}",
            "options.n_toys",
            "max_job_toys",
        )


def _check_built(
    workspace: dict[str, Any] | None, hyps: list[Hypothesis], opts: ScanOptions, limits: SubmissionLimits
) -> JobPlan:
    """The engine's plan of the job, chunked as it will run (nothing allocated or fitted), held against ``limits``."""
    _check_toys(opts, len(hyps), limits)
    job_plan = plan_hypotheses(
        hyps,
        workspace,
        opts.model_dump(mode="json"),
        chunk_size=limits.chunk_size,
        budget_bytes=limits.batch_memory_bytes,
    )
    check_plan(job_plan, [h.name for h in hyps], limits)
    return job_plan


def _select(patches: list[dict[str, Any]], names: Sequence[str] | None) -> list[dict[str, Any]]:
    """The patches named in ``names`` (in that order, once each); all of them when None or empty."""
    if not names:
        return patches
    by_name = {p["metadata"]["name"]: p for p in patches}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"no patch named {', '.join(map(repr, missing[:5]))}", where="options.patches")
    return [by_name[n] for n in dict.fromkeys(names)]


def check_submission(
    workspace: Any,
    patchset: Any,
    options: ScanOptions | dict[str, Any] | None,
    limits: SubmissionLimits | None = None,
    patch_names: Sequence[str] | None = None,
) -> PreparedJob:
    """Everything about a job that can be checked before it is stored or fitted.

    ``workspace``: the background-only (or full) pyhf workspace; ``patchset``: a
    pyhf patchset, or None to fit ``workspace`` itself; ``options``: ScanOptions
    (or a raw object, parsed by :func:`check_options`, its ``patches`` subset
    used when ``patch_names`` is None); ``patch_names``: the patches to run
    (None: all).  Raises :class:`InputError` (:class:`LimitError` past ``limits``).
    """
    if isinstance(options, ScanOptions):
        opts = options
    else:
        opts, subset = check_options(options)
        patch_names = subset if patch_names is None else patch_names
    limits = limits or SubmissionLimits()
    if workspace is None:
        raise InputError("missing: a background-only (or full) pyhf workspace is required", where="workspace")
    validate_workspace(workspace, where="workspace")
    if patchset is None:
        if patch_names:
            raise InputError("a patch subset was given but no patchset", where="options.patches")
        check_measurement(workspace, opts.measurement, where="workspace")
        check_model_size(workspace, limits, where="workspace")
        hyp = expand_hypotheses(workspace, None)[0]
        job_plan = _check_built(None, [hyp], opts, limits)
        return PreparedJob(
            workspace=workspace,
            patches=None,
            names=[hyp.name],
            values=[[]],
            options=opts,
            hypotheses=[hyp],
            plan=job_plan,
        )
    check_measurement(workspace, opts.measurement, where="workspace", poi=False)
    validate_patchset(patchset, where="patchset")
    patches = _select(patchset["patches"], patch_names)
    if not patches:
        raise InputError("no hypotheses to fit", where="patchset")
    check_job_size(len(patches), limits)
    hyps = []
    for patch in patches:  # cheap check that every patch applies; the engine validates each model
        where = f"patchset: patch {patch['metadata']['name']!r}"
        patched = apply_patch(workspace, patch["patch"], where=where)
        check_measurement(patched, opts.measurement, where=where)
        check_model_size(patched, limits, where=where)
        hyps.append(Hypothesis(name=patch["metadata"]["name"], values=[], spec=patched))
    dims = {len(p["metadata"].get("values", [])) for p in patches}
    if len(dims) > 1:
        raise InputError(f"patches have grid values of different lengths {sorted(dims)}", where="patchset")
    job_plan = _check_built(workspace, hyps, opts, limits)
    return PreparedJob(
        workspace=workspace,
        patches=patches,
        names=[p["metadata"]["name"] for p in patches],
        values=[list(p["metadata"].get("values", [])) for p in patches],
        options=opts,
        labels=list(patchset.get("metadata", {}).get("labels", [])),
        hypotheses=hyps,
        plan=job_plan,
    )
