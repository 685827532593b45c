"""Compile hypotheses into one batched, padded tensor model.

Structure alignment lives here and nowhere else.  Each hypothesis (a full
pyhf workspace spec) is parsed into parameters and modifier entries following
pyhf's HistFactory semantics.  Parameters and samples that exist in the
background workspace keep their names; those a patch introduces (the signal
sample, its MC-stat ``shapesys`` whose names carry the mass point) are renamed
by *role* -- modifier type, where they act, and order of appearance -- so that
``shape_mcstat_<point A>_SR`` and ``shape_mcstat_<point B>_SR`` become the same
slot.  Hypotheses with the same channel layout and POI are then padded to the
union structure:

* a sample a hypothesis lacks has zero yield;
* a normsys entry it lacks has ``hi = lo = 1`` and a histosys entry zero deltas
  (both interpolate to exactly 1 / 0 for every parameter value);
* multiplicative modifiers go through a per-hypothesis index table whose
  padding points at a constant 1;
* a parameter it lacks is fixed and its constraint term masked out.

So every hypothesis's NLL equals that of pyhf's model of the single patch
(tests check this at random parameter points).  Every numeric tensor is
stacked per hypothesis; only the index structure is shared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fitserve.engine.errors import InputError
from fitserve.engine.inputs import Hypothesis

if TYPE_CHECKING:
    from fitserve.engine.likelihood import ModelTensors

#: pyhf's default constraint per modifier type (also read by budget.py's size count)
CONSTRAINT = {
    "normsys": "normal",
    "histosys": "normal",
    "lumi": "normal",
    "staterror": "normal",
    "shapesys": "poisson",
    "normfactor": None,
    "shapefactor": None,
}


@dataclass
class ParamSet:
    """One named pyhf parameter set (scalar or one entry per channel bin)."""

    key: str
    name: str
    kind: str  # modifier type that defines it
    n: int
    inits: list[float]
    bounds: list[tuple[float, float]]
    fixed: list[bool]
    constraint: str | None  # "normal", "poisson" or None
    aux: list[float] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)  # normal
    factors: list[float] = field(default_factory=list)  # poisson tau


@dataclass
class ParsedHypothesis:
    """A hypothesis in role-keyed form, before padding."""

    name: str
    values: list[float]
    channels: list[tuple[str, int]]
    poi_key: str
    observed: np.ndarray  # [B]
    samples: dict[tuple[str, str], np.ndarray]  # (channel, sample key) -> nominal [nbins]
    params: dict[str, ParamSet]
    normsys: dict[tuple[str, tuple[str, str]], tuple[float, float]]  # (param key, slot) -> (hi, lo)
    histosys: dict[tuple[str, tuple[str, str]], tuple[np.ndarray, np.ndarray]]  # -> (hi_data, lo_data)
    multiplicative: list[tuple[str, tuple[str, str]]]  # (param key, slot)
    #: the parsed background this hypothesis extends (its dicts hold the background's entries by identity)
    base: "_Parser | None" = None

    def layout_key(self) -> tuple[Any, ...]:
        return (tuple(self.channels), self.poi_key)


def background_names(bkg: dict[str, Any] | None) -> tuple[set[tuple[str, str]], set[str]] | None:
    """(channel, sample) pairs and parameter names of a background workspace."""
    if bkg is None:
        return None
    samples: set[tuple[str, str]] = set()
    params: set[str] = set()
    for ch in bkg["channels"]:
        for s in ch["samples"]:
            samples.add((ch["name"], s["name"]))
            params.update(m["name"] for m in s["modifiers"])
    for m in bkg.get("measurements", []):
        params.update(p["name"] for p in m.get("config", {}).get("parameters", []))
        if m.get("config", {}).get("poi"):
            params.add(m["config"]["poi"])
    return samples, params


@dataclass
class _Parser:
    """Parsing state of one workspace spec: slots, parameter sets and modifier entries.

    A patched hypothesis shares every sample the patch did not touch with the
    background workspace (copy-on-write patching, :func:`inputs.apply_patch`),
    so it is parsed as *the parsed background plus the samples the patch
    added*: ~100x less work per patch than reading the whole spec again.
    """

    where: str
    overrides: dict[str, dict[str, Any]]
    samples: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    params: dict[str, ParamSet] = field(default_factory=dict)
    normsys: dict[tuple[str, tuple[str, str]], tuple[float, float]] = field(default_factory=dict)
    histosys: dict[tuple[str, tuple[str, str]], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    multiplicative: list[tuple[str, tuple[str, str]]] = field(default_factory=list)
    staterror_parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    base: "_Parser | None" = None  # the parsed background this one extends

    def copy(self, where: str) -> "_Parser":
        return _Parser(
            where,
            self.overrides,
            dict(self.samples),
            dict(self.params),
            dict(self.normsys),
            dict(self.histosys),
            list(self.multiplicative),
            {k: list(v) for k, v in self.staterror_parts.items()},
        )

    def add(self, spec: dict[str, Any], todo: list[tuple[int, int, str]], keep: set[str]) -> None:
        """Parse the samples ``todo`` = [(channel index, sample index, slot key)] of ``spec``.

        Modifier names in ``keep`` keep their name; others (what a patch
        introduced) get a role key: modifier type, the slots it acts on and
        its order of appearance, so that the signal's MC-stat parameters of
        different mass points share one slot.  The steps: the samples' yields
        (:meth:`_read_samples`), the role keys (:func:`_role_keys`), the modifiers
        (:meth:`_read_modifiers`), the staterror widths (:meth:`_staterror_sigmas`).
        """
        nbins = {ch["name"]: len(ch["samples"][0]["data"]) for ch in spec["channels"]}
        slot_of, where_used = self._read_samples(spec, todo, nbins)
        key_of = _role_keys(spec, todo, keep, where_used)
        touched = self._read_modifiers(spec, todo, nbins, slot_of, key_of)
        self._staterror_sigmas(touched)

    def _read_samples(
        self, spec: dict[str, Any], todo: list[tuple[int, int, str]], nbins: dict[str, int]
    ) -> tuple[dict[tuple[int, int], tuple[str, str]], dict[str, set[tuple[str, str]]]]:
        """The nominal yields of ``todo`` by slot; ``(slot of each sample, slots each modifier name acts on)``."""
        slot_of: dict[tuple[int, int], tuple[str, str]] = {}
        where_used: dict[str, set[tuple[str, str]]] = {}
        for ci, si, key in todo:
            ch, smp = spec["channels"][ci], spec["channels"][ci]["samples"][si]
            if len(smp["data"]) != nbins[ch["name"]]:
                raise InputError(
                    f"sample {smp['name']!r} has {len(smp['data'])} bins, channel {ch['name']!r} has {nbins[ch['name']]}",
                    where=f"{self.where} /channels/{ci}/samples/{si}/data",
                )
            slot = (ch["name"], key)
            self.samples[slot] = np.asarray(smp["data"], dtype=np.float64)
            slot_of[(ci, si)] = slot
            for m in smp["modifiers"]:
                where_used.setdefault(m["name"], set()).add(slot)
        return slot_of, where_used

    def _read_modifiers(
        self,
        spec: dict[str, Any],
        todo: list[tuple[int, int, str]],
        nbins: dict[str, int],
        slot_of: dict[tuple[int, int], tuple[str, str]],
        key_of: dict[str, str],
    ) -> set[str]:
        """Parameter sets and modifier entries of ``todo``; the staterror keys touched (their widths follow)."""
        touched_staterror: set[str] = set()
        for ci, si, _ in todo:
            nb = nbins[spec["channels"][ci]["name"]]
            smp = spec["channels"][ci]["samples"][si]
            slot = slot_of[(ci, si)]
            nom = self.samples[slot]
            for mi, m in enumerate(smp["modifiers"]):
                mtype, name, data = m["type"], m["name"], m.get("data")
                key = key_of[name]
                mwhere = f"{self.where} /channels/{ci}/samples/{si}/modifiers/{mi}"
                n = nb if mtype in ("shapesys", "staterror", "shapefactor") else 1
                ps = self.params.get(key)
                if ps is None:
                    ps = _default_paramset(key, name, mtype, n, nom, data, self.overrides.get(name), mwhere)
                    self.params[key] = ps
                elif ps.n != n or ps.constraint != CONSTRAINT[mtype]:
                    raise InputError(
                        f"parameter {name!r} is used as {ps.kind} and {mtype} with incompatible definitions",
                        where=mwhere,
                    )
                if mtype == "normsys":
                    self.normsys[(key, slot)] = (float(data["hi"]), float(data["lo"]))
                elif mtype == "histosys":
                    hi = np.asarray(data["hi_data"], dtype=np.float64) - nom
                    lo = np.asarray(data["lo_data"], dtype=np.float64) - nom
                    if hi.shape != nom.shape or lo.shape != nom.shape:
                        raise InputError("histosys data does not match the sample's bins", where=mwhere)
                    self.histosys[(key, slot)] = (hi, lo)
                else:
                    self.multiplicative.append((key, slot))
                    if mtype == "staterror":
                        unc = np.asarray(data, dtype=np.float64)
                        if unc.shape != nom.shape:
                            raise InputError("staterror data does not match the sample's bins", where=mwhere)
                        self.staterror_parts.setdefault(key, []).append((nom, unc))
                        touched_staterror.add(key)
                    elif mtype == "shapesys" and len(data) != nb:
                        raise InputError("shapesys data does not match the sample's bins", where=mwhere)
        return touched_staterror

    def _staterror_sigmas(self, touched: set[str]) -> None:
        """staterror: one relative uncertainty per bin from all samples sharing it (as pyhf)."""
        for key in touched:
            parts = self.staterror_parts[key]
            total = np.sum([nom for nom, _ in parts], axis=0)
            rel2 = np.sum(
                [np.where(total > 0, (unc / np.where(total > 0, total, 1.0)) ** 2, 0.0) for _, unc in parts], axis=0
            )
            sig = np.sqrt(rel2)
            ps = replace(self.params[key])  # the background's ParamSet may be shared
            ps.fixed = [bool(s == 0) for s in sig]
            ps.sigmas = [float(s) if s > 0 else 1.0 for s in sig]
            _apply_override(ps, self.overrides.get(ps.name), self.where)
            self.params[key] = ps


def _role_keys(
    spec: dict[str, Any],
    todo: list[tuple[int, int, str]],
    keep: set[str],
    where_used: dict[str, set[tuple[str, str]]],
) -> dict[str, str]:
    """The key of each modifier name of ``todo``: its name when in ``keep``, else its role.

    A role is the modifier's family (normsys and histosys of one name share one
    parameter in pyhf: ``alpha``), the slots it acts on and its order of appearance
    among names of that role: ``~shapesys@SR/+new0#0``.
    """
    key_of: dict[str, str] = {}
    counters: dict[str, int] = {}
    for ci, si, _ in todo:
        for m in spec["channels"][ci]["samples"][si]["modifiers"]:
            name = m["name"]
            if name in key_of:
                continue
            if name in keep:
                key_of[name] = name
            else:
                family = "alpha" if m["type"] in ("normsys", "histosys") else m["type"]
                role = f"~{family}@" + ",".join(f"{c}/{k}" for c, k in sorted(where_used[name]))
                k = counters.get(role, 0)
                counters[role] = k + 1
                key_of[name] = f"{role}#{k}"
    return key_of


def _observed(spec: dict[str, Any], channels: list[tuple[str, int]], where: str) -> np.ndarray:
    observed_by_channel = {o["name"]: o["data"] for o in spec.get("observations", [])}
    observed = []
    for ch, nb in channels:
        if ch not in observed_by_channel:
            raise InputError(f"no observations for channel {ch!r}", where=where)
        obs = observed_by_channel[ch]
        if len(obs) != nb:
            raise InputError(f"observations of channel {ch!r} have {len(obs)} bins, samples have {nb}", where=where)
        observed.extend(obs)
    return np.asarray(observed, dtype=np.float64)


@dataclass
class ParsedBackground:
    """A background workspace parsed once, for the incremental parse of its patched hypotheses."""

    spec: dict[str, Any]
    names: tuple[set[tuple[str, str]], set[str]]
    parser: _Parser | None  # None: the background cannot be parsed alone (each hypothesis is parsed in full)
    sample_ids: dict[int, tuple[int, int]]  # id(sample dict) -> (channel, sample) index in the background
    measurement: str | None


def parse_background(bkg: dict[str, Any], measurement: str | None = None) -> ParsedBackground:
    names = background_names(bkg)
    ids = {id(smp): (ci, si) for ci, ch in enumerate(bkg["channels"]) for si, smp in enumerate(ch["samples"])}
    try:
        meas = _measurement(bkg, measurement, "workspace")
        overrides = {p["name"]: p for p in meas.get("config", {}).get("parameters", [])}
        parser = _Parser("workspace", overrides)
        todo = [(ci, si, smp["name"]) for ci, ch in enumerate(bkg["channels"]) for si, smp in enumerate(ch["samples"])]
        parser.add(bkg, todo, names[1])
    except InputError:
        parser = None
    return ParsedBackground(bkg, names, parser, ids, measurement)


def parse_hypothesis(
    hyp: Hypothesis,
    bkg: tuple[set[tuple[str, str]], set[str]] | ParsedBackground | None,
    measurement: str | None = None,
) -> ParsedHypothesis:
    """Read one full workspace spec into role-keyed parameters and entries.

    ``bkg`` describes the background-only workspace the hypothesis was
    patched from (a :class:`ParsedBackground`, or just its
    ``background_names``; None for a standalone workspace): names present
    there are kept, names a patch introduced are replaced by role keys.
    """
    spec = hyp.spec
    where = f"patch {hyp.name!r}" if bkg is not None else "workspace"
    meas = _measurement(spec, measurement, where)
    config = meas.get("config", {})
    poi = config.get("poi")
    if poi is None:
        raise InputError("the measurement has no POI (config.poi)", where=where)
    names = bkg.names if isinstance(bkg, ParsedBackground) else bkg
    keep = names[1] | {poi} if names is not None else None  # the background's parameter names and the POI

    channels = [(ch["name"], len(ch["samples"][0]["data"])) for ch in spec["channels"]]
    observed = _observed(spec, channels, where)

    parser = _incremental(spec, bkg, where) if isinstance(bkg, ParsedBackground) else None
    if parser is None:
        parser = _parse_in_full(spec, config, names, keep, where)
    poi_key = poi  # the POI always keeps its name
    if poi_key not in parser.params:
        raise InputError(f"POI {poi!r} is not a parameter of the model", where=where)

    return ParsedHypothesis(
        name=hyp.name,
        values=list(hyp.values),
        channels=channels,
        poi_key=poi_key,
        observed=observed,
        samples=parser.samples,
        params=parser.params,
        normsys=parser.normsys,
        histosys=parser.histosys,
        multiplicative=parser.multiplicative,
        base=parser.base,
    )


def _parse_in_full(
    spec: dict[str, Any],
    config: dict[str, Any],
    names: tuple[set[tuple[str, str]], set[str]] | None,
    keep: set[str] | None,
    where: str,
) -> _Parser:
    """Every sample of ``spec`` parsed: background samples keep their names, a patch's new ones are ``+new<i>``.

    ``names``: the background's (sample, parameter) names (None: standalone, every name kept);
    ``keep``: the parameter names kept (the background's and the POI).
    """
    bkg_samples = names[0] if names is not None else set()
    parser = _Parser(where, {p["name"]: p for p in config.get("parameters", [])})
    todo = []
    for ci, ch in enumerate(spec["channels"]):
        n_new = 0
        for si, smp in enumerate(ch["samples"]):
            if names is None or (ch["name"], smp["name"]) in bkg_samples:
                key = smp["name"]
            else:
                key = f"+new{n_new}"
                n_new += 1
            todo.append((ci, si, key))
    all_names = {m["name"] for ch in spec["channels"] for smp in ch["samples"] for m in smp["modifiers"]}
    parser.add(spec, todo, all_names if keep is None else keep)
    return parser


def _incremental(spec: dict[str, Any], bkg: ParsedBackground, where: str) -> _Parser | None:
    """The parsed background plus the samples a patch added, or None where that does not apply.

    Applies when the patch only added samples to the background's channels:
    same channels in the same order, every background sample still there (the
    very same object), the measurements untouched.
    """
    base = bkg.spec
    if bkg.parser is None or spec.get("measurements") is not base.get("measurements"):
        return None
    if len(spec["channels"]) != len(base["channels"]):
        return None
    seen = 0
    todo = []
    for ci, (ch, bch) in enumerate(zip(spec["channels"], base["channels"])):
        if ch.get("name") != bch.get("name"):
            return None
        n_new = 0
        for si, smp in enumerate(ch["samples"]):
            if bkg.sample_ids.get(id(smp), (None,))[0] == ci:
                seen += 1
            else:
                todo.append((ci, si, f"+new{n_new}"))
                n_new += 1
    if seen != len(bkg.sample_ids):
        return None  # a background sample was removed or replaced
    parser = bkg.parser.copy(where)
    parser.base = bkg.parser
    poi = (_measurement(spec, bkg.measurement, where).get("config") or {}).get("poi")
    parser.add(spec, todo, bkg.names[1] | {poi})
    return parser


def _measurement(spec: dict[str, Any], name: str | None, where: str) -> dict[str, Any]:
    measurements = spec.get("measurements", [])
    if not measurements:
        raise InputError("the workspace has no measurement", where=where)
    if name is None:
        return measurements[0]
    for m in measurements:
        if m["name"] == name:
            return m
    raise InputError(f"no measurement named {name!r}", where=where)


def _default_paramset(
    key: str, name: str, mtype: str, n: int, nom: np.ndarray, data: Any, override: dict | None, where: str
) -> ParamSet:
    constraint = CONSTRAINT[mtype]
    if mtype in ("normsys", "histosys"):
        ps = ParamSet(key, name, mtype, 1, [0.0], [(-5.0, 5.0)], [False], constraint, [0.0], [1.0])
    elif mtype == "normfactor":
        ps = ParamSet(key, name, mtype, 1, [1.0], [(0.0, 10.0)], [False], None)
    elif mtype == "shapefactor":
        ps = ParamSet(key, name, mtype, n, [1.0] * n, [(0.0, 10.0)] * n, [False] * n, None)
    elif mtype == "staterror":  # sigmas filled in once all samples are seen
        ps = ParamSet(
            key, name, mtype, n, [1.0] * n, [(1e-10, 10.0)] * n, [False] * n, constraint, [1.0] * n, [1.0] * n
        )
    elif mtype == "shapesys":
        unc = np.asarray(data, dtype=np.float64)
        valid = (nom > 0) & (unc > 0)
        tau = np.where(valid, nom**2 / np.where(valid, unc, 1.0) ** 2, 1.0)
        ps = ParamSet(
            key,
            name,
            mtype,
            n,
            [1.0] * n,
            [(1e-10, 10.0)] * n,
            [not v for v in valid],
            constraint,
            aux=tau.tolist(),
            factors=tau.tolist(),
        )
    elif mtype == "lumi":
        if not override or "auxdata" not in override or "sigmas" not in override:
            raise InputError(f"lumi parameter {name!r} needs auxdata and sigmas in the measurement config", where=where)
        aux = float(override["auxdata"][0])
        ps = ParamSet(
            key, name, mtype, 1, [aux], [(0.0, 10.0 * aux)], [False], constraint, [aux], [float(override["sigmas"][0])]
        )
    else:  # schema validation makes this unreachable
        raise InputError(f"unknown modifier type {mtype!r}", where=where)
    if mtype != "staterror":
        _apply_override(ps, override, where)
    return ps


def _apply_override(ps: ParamSet, override: dict | None, where: str) -> None:
    """Apply a measurement ``config.parameters`` entry as pyhf does."""
    if not override:
        return
    for field_name, attr in (("inits", "inits"), ("auxdata", "aux"), ("sigmas", "sigmas")):
        if field_name in override:
            values = [float(v) for v in override[field_name]]
            if len(values) != ps.n:
                raise InputError(
                    f"{field_name} of parameter {ps.name!r} has {len(values)} entries, expected {ps.n}", where=where
                )
            setattr(ps, attr, values)
    if "bounds" in override:
        bounds = [tuple(map(float, b)) for b in override["bounds"]]
        if len(bounds) != ps.n:
            raise InputError(
                f"bounds of parameter {ps.name!r} have {len(bounds)} entries, expected {ps.n}", where=where
            )
        ps.bounds = bounds
    if "fixed" in override:
        ps.fixed = [bool(override["fixed"])] * ps.n


# --------------------------------------------------------------------------
# grouping and padding


def group_hypotheses(parsed: Sequence[ParsedHypothesis]) -> list[list[int]]:
    """Split hypotheses into groups that can share one padded structure.

    Same channel layout and POI, and no parameter key defined two different
    ways.  In practice a whole patchset is one group.
    """
    groups: list[tuple[tuple[Any, ...], dict[str, tuple[int, str | None]], list[int]]] = []
    for i, p in enumerate(parsed):
        sig = {k: (ps.n, ps.constraint) for k, ps in p.params.items()}
        for layout, known, members in groups:
            if layout == p.layout_key() and all(known.get(k, v) == v for k, v in sig.items()):
                known.update(sig)
                members.append(i)
                break
        else:
            groups.append((p.layout_key(), dict(sig), [i]))
    return [members for _, _, members in groups]


@dataclass
class BatchedModel:
    """A padded model for H hypotheses: per-hypothesis arrays plus shared index tables."""

    names: list[str]
    values: list[list[float]]
    channels: list[tuple[str, int]]
    param_names: list[str]  # scalar parameter labels (role keys), length P
    poi_index: int
    structure_key: str  # hash of everything that fixes array shapes and index tables
    arrays: dict[str, np.ndarray]  # per hypothesis (leading axis H), by ModelTensors field
    structure: dict[str, np.ndarray]  # index tables shared by all hypotheses (ModelTensors' shared fields)
    param_labels: list[list[str | None]]  # per hypothesis: original name per scalar param (None = padding)

    @property
    def n_hypotheses(self) -> int:
        return len(self.names)

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def tensors(self) -> ModelTensors:
        """Arrays and structure as one typed PyTree of JAX arrays (:class:`~fitserve.engine.likelihood.ModelTensors`)."""
        import jax

        from fitserve.engine.likelihood import ModelTensors

        return ModelTensors(**{k: jax.device_put(v) for k, v in {**self.arrays, **self.structure}.items()})

    def hypothesis(self, h: int) -> ModelTensors:
        """The tensors of hypothesis ``h`` alone (for unbatched evaluation)."""
        import jax

        from fitserve.engine.likelihood import ModelTensors

        return ModelTensors(
            **{k: jax.device_put(v[h]) for k, v in self.arrays.items()},
            **{k: jax.device_put(v) for k, v in self.structure.items()},
        )

    def take(self, index: Sequence[int]) -> "BatchedModel":
        """A model with a subset (or repetition) of hypotheses; same structure."""
        idx = np.asarray(index, dtype=np.int64)
        return BatchedModel(
            names=[self.names[i] for i in idx],
            values=[self.values[i] for i in idx],
            channels=self.channels,
            param_names=self.param_names,
            poi_index=self.poi_index,
            structure_key=self.structure_key,
            arrays={k: v[idx] for k, v in self.arrays.items()},
            structure=self.structure,
            param_labels=[self.param_labels[i] for i in idx],
        )


#: Shape buckets: every padded dimension is rounded up to the next of these, so that
#: different workspaces of similar size compile to the same shapes and JAX's
#: persistent cache serves them (index tables are inputs, not constants).  Steps
#: of at most 25-33% keep the padding cost small.
def bucket(n: int, floor: int = 1) -> int:
    """The smallest bucket ``>= max(n, floor)``: 1, 2, 3, 4, 6, 8, then 2^k x {1, 1.25, 1.5, 1.75}."""
    n = max(int(n), floor, 1)
    for small in (1, 2, 3, 4, 6, 8):
        if n <= small:
            return small
    k = 8
    while True:
        for step in (k, k * 5 // 4, k * 3 // 2, k * 7 // 4):
            if n <= step:
                return step
        k *= 2


def _is_alpha(kind: str) -> bool:
    """normsys and histosys parameters (one per name, shared by both types) come first."""
    return kind in ("normsys", "histosys")


@dataclass(frozen=True)
class _ParamLayout:
    """Where each parameter set of a group sits in the padded vector ``[alphas | multiplicative]``."""

    start: dict[str, int]  # role key -> first index
    labels: list[str]  # one per scalar parameter, padding ``~pad<j>``
    n_alpha: int  # nA, padded
    poi_index: int

    @property
    def n_par(self) -> int:
        return len(self.labels)


def _param_layout(parsed: Sequence[ParsedHypothesis], rnd: Any) -> _ParamLayout:
    """The union of the group's parameter keys: alphas, then multiplicative; background names before role keys."""
    union: dict[str, ParamSet] = {}
    for p in parsed:
        for k, ps in p.params.items():
            union.setdefault(k, ps)
    order = lambda k: (not _is_alpha(union[k].kind), k.startswith("~"), k)  # noqa: E731
    keys = sorted(union, key=order)
    start: dict[str, int] = {}
    labels: list[str] = []
    n_alpha_real = sum(1 for k in keys if _is_alpha(union[k].kind))
    n_alpha = rnd(n_alpha_real)
    for k in keys:
        if not _is_alpha(union[k].kind) and len(labels) < n_alpha:
            labels.extend(f"~pad{j}" for j in range(len(labels), n_alpha))
        start[k] = len(labels)
        labels.extend([k] if union[k].n == 1 else [f"{k}[{i}]" for i in range(union[k].n)])
    if len(labels) < n_alpha:
        labels.extend(f"~pad{j}" for j in range(len(labels), n_alpha))
    n_mult = rnd(len(labels) - n_alpha)
    labels.extend(f"~pad{j}" for j in range(len(labels), n_alpha + n_mult))
    return _ParamLayout(start, labels, n_alpha, start[parsed[0].poi_key])


@dataclass(frozen=True)
class _BinLayout:
    """The group's sample slots and their compact (slot, bin) pairs: only the bins of each slot's own channel."""

    nb_of: dict[str, int]  # channel -> bins
    slot_index: dict[tuple[str, str], int]  # (channel, sample key) -> slot
    sb_start: dict[int, int]  # slot -> its first (slot, bin) pair
    sb_slot: list[int]  # [SB] padded: pairs past the real ones are slot 0, bin 0 with zero yield
    sb_bin: list[int]
    n_slots: int  # S, padded
    n_bins_real: int
    n_bins: int  # B, padded

    @property
    def n_sb(self) -> int:
        return len(self.sb_slot)


def _bin_layout(parsed: Sequence[ParsedHypothesis], rnd: Any) -> _BinLayout:
    """Slots (the union of the group's samples, in channel order, background samples first) and their bins."""
    channels = parsed[0].channels
    offsets: dict[str, int] = {}
    b = 0
    for ch, nb in channels:
        offsets[ch] = b
        b += nb
    slots = sorted(
        {s for p in parsed for s in p.samples},
        key=lambda s: ([c for c, _ in channels].index(s[0]), s[1].startswith("+"), s[1]),
    )
    nb_of = dict(channels)
    sb_slot: list[int] = []
    sb_bin: list[int] = []
    sb_start: dict[int, int] = {}
    for si, (ch, _) in enumerate(slots):
        sb_start[si] = len(sb_slot)
        for i in range(nb_of[ch]):
            sb_slot.append(si)
            sb_bin.append(offsets[ch] + i)
    pad_sb = rnd(len(sb_slot)) - len(sb_slot)
    sb_slot += [0] * pad_sb  # zero yield and no modifiers: contributes nothing to bin 0
    sb_bin += [0] * pad_sb
    return _BinLayout(
        nb_of=nb_of,
        slot_index={s: i for i, s in enumerate(slots)},
        sb_start=sb_start,
        sb_slot=sb_slot,
        sb_bin=sb_bin,
        n_slots=rnd(len(slots)),
        n_bins_real=b,
        n_bins=rnd(b),
    )


#: the per-hypothesis arrays a template row (the background's entries) is copied into
_TEMPLATED = (
    "init",
    "lo",
    "hi",
    "fixed",
    "normal_mask",
    "normal_aux",
    "normal_sigma",
    "pois_mask",
    "pois_tau",
    "pois_aux",
    "nominal",
    "ns_hi",
    "ns_lo",
    "hs_hi",
    "hs_lo",
)


def _neutral_arrays(n_hyp: int, pars: _ParamLayout, bins: _BinLayout) -> dict[str, np.ndarray]:
    """Every per-hypothesis array at its neutral value (what padding keeps): no yield, no modifier, fixed."""
    H, n_par, n_alpha, n_sb = n_hyp, pars.n_par, pars.n_alpha, bins.n_sb
    arrays = {
        "nominal": np.zeros((H, n_sb)),
        "ns_hi": np.ones((H, bins.n_slots, n_alpha)),
        "ns_lo": np.ones((H, bins.n_slots, n_alpha)),
        "hs_hi": np.zeros((H, n_sb, n_alpha)),
        "hs_lo": np.zeros((H, n_sb, n_alpha)),
        "init": np.zeros((H, n_par)),
        "lo": np.zeros((H, n_par)),
        "hi": np.ones((H, n_par)),
        "fixed": np.ones((H, n_par), dtype=bool),
        "normal_mask": np.zeros((H, n_par), dtype=bool),
        "normal_aux": np.zeros((H, n_par)),
        "normal_sigma": np.ones((H, n_par)),
        "pois_mask": np.zeros((H, n_par), dtype=bool),
        "pois_tau": np.ones((H, n_par)),
        "pois_aux": np.ones((H, n_par)),
        "observed": np.zeros((H, bins.n_bins)),
    }
    # padded parameters: fixed at a neutral value inside their bounds (alphas 0, factors 1)
    arrays["init"][:, n_alpha:] = 1.0
    arrays["lo"][:, :n_alpha], arrays["hi"][:, :n_alpha] = -1.0, 1.0
    arrays["lo"][:, n_alpha:], arrays["hi"][:, n_alpha:] = 0.0, 2.0
    return arrays


def _fill_row(
    arrays: dict[str, np.ndarray],
    pars: _ParamLayout,
    bins: _BinLayout,
    h: int,
    entries: tuple[Any, Any, Any, Any, Any],
    plabel: list[str | None],
    lists: list[list[int]],
    all_params: dict[str, ParamSet],
) -> None:
    """Write ``entries`` (params, samples, normsys, histosys, multiplicative) of one hypothesis into row ``h``.

    All of a hypothesis's entries, or what differs from a template row.  Multiplicative entries
    go into ``lists`` (per (slot, bin), the parameter indices acting there); labels into ``plabel``.
    """
    params, samples, normsys, histosys, multiplicative = entries
    start, slot_index, sb_start = pars.start, bins.slot_index, bins.sb_start
    for k, ps in params:
        j0 = start[k]
        sl = slice(j0, j0 + ps.n)
        plabel[sl] = [ps.name] if ps.n == 1 else [f"{ps.name}[{i}]" for i in range(ps.n)]
        arrays["init"][h, sl] = ps.inits
        arrays["lo"][h, sl] = [b[0] for b in ps.bounds]
        arrays["hi"][h, sl] = [b[1] for b in ps.bounds]
        arrays["fixed"][h, sl] = ps.fixed
        if ps.constraint == "normal":
            arrays["normal_mask"][h, sl] = True
            arrays["normal_aux"][h, sl] = ps.aux
            arrays["normal_sigma"][h, sl] = ps.sigmas
        elif ps.constraint == "poisson":
            arrays["pois_mask"][h, sl] = True
            arrays["pois_tau"][h, sl] = ps.factors
            arrays["pois_aux"][h, sl] = ps.aux
    for slot, nom in samples:
        o = sb_start[slot_index[slot]]
        arrays["nominal"][h, o : o + len(nom)] = nom
    for (k, slot), (vhi, vlo) in normsys:
        si, j = slot_index[slot], start[k]
        arrays["ns_hi"][h, si, j], arrays["ns_lo"][h, si, j] = vhi, vlo
    for (k, slot), (dhi, dlo) in histosys:
        o, j = sb_start[slot_index[slot]], start[k]
        arrays["hs_hi"][h, o : o + len(dhi), j] = dhi
        arrays["hs_lo"][h, o : o + len(dlo), j] = dlo
    for k, slot in multiplicative:
        o = sb_start[slot_index[slot]]
        per_bin = all_params[k].n > 1
        for i in range(bins.nb_of[slot[0]]):
            lists[o + i].append(start[k] + (i if per_bin else 0))


def _changed(entries: dict[Any, Any], known: dict[Any, Any] | None) -> Any:
    """The items of ``entries`` that are not the very object ``known`` holds under the same key (all without)."""
    if known is None:
        return entries.items()
    return [(k, v) for k, v in entries.items() if known.get(k) is not v]


def _fill_rows(
    parsed: Sequence[ParsedHypothesis], arrays: dict[str, np.ndarray], pars: _ParamLayout, bins: _BinLayout
) -> tuple[list[list[str | None]], list[list[list[int]]]]:
    """Every hypothesis's entries into its row; ``(param_labels, mult_lists)`` per hypothesis.

    Hypotheses patched from one background share its entries (by identity): those are written
    once into a template row and copied, then only what each patch changed.
    """
    n_par, n_sb = pars.n_par, bins.n_sb
    mult_lists: list[list[list[int]]] = [[[] for _ in range(n_sb)] for _ in range(len(parsed))]
    param_labels: list[list[str | None]] = []
    base = parsed[0].base
    if base is None or any(p.base is not base for p in parsed):
        base = None
    template_label: list[str | None] = [None] * n_par
    template_lists: list[list[int]] = [[] for _ in range(n_sb)]
    if base is not None:
        entries = (base.params.items(), base.samples.items(), base.normsys.items(), base.histosys.items())
        fill = (*entries, base.multiplicative)
        _fill_row(arrays, pars, bins, 0, fill, template_label, template_lists, base.params)
        for name in _TEMPLATED:
            arrays[name][1:] = arrays[name][0]
    for h, p in enumerate(parsed):
        arrays["observed"][h, : bins.n_bins_real] = p.observed
        plabel = list(template_label)
        lists = mult_lists[h]
        for i, row in enumerate(template_lists):
            lists[i].extend(row)
        fill = (
            _changed(p.params, base and base.params),
            _changed(p.samples, base and base.samples),
            _changed(p.normsys, base and base.normsys),
            _changed(p.histosys, base and base.histosys),
            p.multiplicative[len(base.multiplicative) :] if base is not None else p.multiplicative,
        )
        _fill_row(arrays, pars, bins, h, fill, plabel, lists, p.params)
        param_labels.append(plabel)
    return param_labels, mult_lists


def _mult_table(mult_lists: list[list[list[int]]], n_sb: int, n_par: int, rnd: Any) -> tuple[np.ndarray, np.ndarray]:
    """One shared index table ``mult [SB, Km]`` (union over hypotheses) plus a per-hypothesis mask ``mult_on``.

    Index arrays shared by the whole batch keep XLA's gathers cheap under vmap; padding points
    at index ``n_par``, the constant 1.
    """
    H = len(mult_lists)
    union_lists = [list(dict.fromkeys(j for hh in mult_lists for j in hh[i])) for i in range(n_sb)]
    width = rnd(max([len(x) for x in union_lists] + [1]))
    mult = np.full((n_sb, width), n_par, dtype=np.int32)  # n_par -> constant 1
    mult_on = np.zeros((H, n_sb, width), dtype=bool)
    for i, idx in enumerate(union_lists):
        if not idx:
            continue
        mult[i, : len(idx)] = idx
        col = {j: c for c, j in enumerate(idx)}
        for h in range(H):
            for j in mult_lists[h][i]:
                mult_on[h, i, col[j]] = True
    return mult, mult_on


def _structure_key(arrays: dict[str, np.ndarray], structure: dict[str, np.ndarray], poi_index: int) -> str:
    """A hash of everything that fixes the array shapes and index tables (what the compiled fit depends on)."""
    shape_sig = repr(sorted((k, v.shape[1:], str(v.dtype)) for k, v in arrays.items()))
    shape_sig += repr({k: v.tolist() for k, v in structure.items()}) + repr(poi_index)
    return hashlib.sha256(shape_sig.encode()).hexdigest()[:16]


def build_batched_model(parsed: Sequence[ParsedHypothesis], pad: bool = True) -> BatchedModel:
    """Pad a group of parsed hypotheses to their union structure and stack.

    Parameters are ordered ``[alphas | multiplicative]``: the first ``nA``
    (normsys/histosys) act through interpolation tables that are dense over
    alphas (``ns_hi [S, nA]``, ``hs_hi [SB, nA]``), so the likelihood's
    derivatives are plain matrix products with no scatters; the rest
    (normfactor, lumi, staterror, shapesys, shapefactor) act through a short
    per-(slot, bin) index table ``mult [SB, Km]``.  With ``pad`` every
    dimension is rounded up to a :func:`bucket` (padding is exactly neutral).

    The steps: the parameter layout (:func:`_param_layout`), the slots and their bins
    (:func:`_bin_layout`), neutral arrays (:func:`_neutral_arrays`) filled row by row
    (:func:`_fill_rows`), the shared multiplicative table (:func:`_mult_table`).
    """
    rnd = bucket if pad else (lambda n, floor=1: max(int(n), floor, 1))
    pars = _param_layout(parsed, rnd)
    bins = _bin_layout(parsed, rnd)
    arrays = _neutral_arrays(len(parsed), pars, bins)
    param_labels, mult_lists = _fill_rows(parsed, arrays, pars, bins)
    mult, arrays["mult_on"] = _mult_table(mult_lists, bins.n_sb, pars.n_par, rnd)
    structure = {
        "sb_slot": np.asarray(bins.sb_slot, np.int32),
        "sb_bin": np.asarray(bins.sb_bin, np.int32),
        "mult": mult,
    }
    return BatchedModel(
        names=[p.name for p in parsed],
        values=[p.values for p in parsed],
        channels=parsed[0].channels,
        param_names=pars.labels,
        poi_index=pars.poi_index,
        structure_key=_structure_key(arrays, structure, pars.poi_index),
        arrays=arrays,
        structure=structure,
        param_labels=param_labels,
    )


def compile_hypotheses(
    hypotheses: Sequence[Hypothesis], bkg: dict[str, Any] | None, measurement: str | None = None
) -> list[BatchedModel]:
    """Parse, group and pad: one ``BatchedModel`` per structure group."""
    base = parse_background(bkg, measurement) if bkg is not None else None
    parsed = [parse_hypothesis(h, base, measurement) for h in hypotheses]
    return [build_batched_model([parsed[i] for i in group]) for group in group_hypotheses(parsed)]


def compile_each(
    hypotheses: Sequence[Hypothesis], bkg: dict[str, Any] | None, measurement: str | None = None
) -> list[BatchedModel]:
    """One ``BatchedModel`` per hypothesis, padded to its own shape bucket.

    Toys need it: a hypothesis built alone has the same shapes, hence the same
    arithmetic, whichever other hypotheses a chunk of a job holds.
    """
    base = parse_background(bkg, measurement) if bkg is not None else None
    return [build_batched_model([parse_hypothesis(h, base, measurement)]) for h in hypotheses]
