"""Reading, validating and patching pyhf inputs.

pyhf's JSON schemas do the validation; ``jsonpatch`` (pyhf's own patch
library) applies the patches.  On top of the schemas this module refuses what
they let through and would break a fit or the service later: NaN, infinities
and integers beyond a float, negative yields or uncertainties, normsys factors
<= 0, mismatched bins, duplicate names, deep nesting, a POI that is not in the
model (:func:`check_measurement`).  Every :class:`InputError` names the place:
``workspace /observations/1/data/0``, ``patchset: patch 'X' /channels/2/samples/4/data/3``.

What this module adds besides is a copy-on-write patch
application: applying 1000 patches to a 1 MB background workspace with
``deepcopy`` per patch costs seconds, while copying only the containers on the
patch paths costs microseconds and lets the model compiler reuse everything the
patch did not touch (shared by identity with the background workspace).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import jsonpatch
import jsonpointer

from fitserve.engine import schema as pyhf_schema
from fitserve.engine.errors import InputError


@dataclass(frozen=True)
class Hypothesis:
    """One signal hypothesis: a full workspace spec plus its name and grid values."""

    name: str
    values: list[float] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict, repr=False)


#: containers nested deeper than this are refused before anything recursive sees them (a pyhf
#: workspace nests 9 levels, a patchset 11; Python's JSON parser and jsonschema recurse)
MAX_NESTING = 64
#: the largest magnitude a JSON integer may have: beyond it ``float()`` overflows
_MAX_INT = int(sys.float_info.max)
_MODIFIER_TYPES = ("normfactor", "normsys", "histosys", "shapesys", "staterror", "shapefactor", "lumi")
#: modifier types whose ``data`` is one non-negative number per bin of the sample
_PER_BIN_DATA = ("staterror", "shapesys")
#: modifier types with one parameter per bin (a POI must be one parameter)
PER_BIN_PARAMETERS = ("staterror", "shapesys", "shapefactor")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: bytes | str, where: str) -> Any:
    """``json.loads`` whose every failure is an :class:`InputError` naming ``where``.

    Besides syntax errors, Python's parser raises ``RecursionError`` on deep
    nesting (about 1000 levels), ``ValueError`` on integers of more than 4300
    digits and ``UnicodeDecodeError`` on bytes that are not UTF-8/16/32.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", where=where) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid JSON (not UTF-8 text: can't decode byte {exc.start}: {exc.reason})", where=where
        ) from None
    except RecursionError:
        raise InputError("not valid JSON here: arrays or objects nested too deeply", where=where) from None
    except ValueError as exc:  # e.g. an integer with more digits than int() converts
        raise InputError(f"not valid JSON here: {exc}", where=where) from None


def load_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error if it is not JSON."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", where=str(path)) from exc
    return parse_json(raw, where=str(path))


def _at(where: str, pointer: str) -> str:
    """``where`` followed by a JSON pointer: ``workspace /channels/0/samples/1/data/3`` (long ones shortened)."""
    if len(pointer) > 160:
        pointer = pointer[:150] + "/..."
    return f"{where} {pointer}" if pointer else where


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]" if text[0] == "[" else text[: limit - 3] + "..."


def _name(value: Any) -> str:
    """A name as it appears in a message (quoted, at most 80 characters)."""
    return _short(value, 80)


def _schema_check(spec: Any, schema: str, what: str, where: str, locate: Any = None) -> None:
    """Validate ``spec`` against one of pyhf's schemas; InputError naming the JSON path.

    ``locate(parts) -> where`` turns the failing path into the error's location
    (default: ``where`` and the JSON pointer into ``spec``).
    """
    try:
        pyhf_schema.validate(spec, schema)
    except pyhf_schema.SchemaError as exc:
        err = exc.error  # the jsonschema ValidationError (best match)
        parts = list(err.absolute_path)
        message = err.message
        shown = repr(err.instance)
        if len(shown) > 120 and message.startswith(shown):  # never echo a whole document back
            message = _short(err.instance) + message[len(shown) :]
        loc = locate(parts) if locate else _at(where, _pointer(parts))
        raise InputError(f"not a valid pyhf {what}: {message}", where=loc) from None


def _scan(doc: Any, where: str, locate: Any = None) -> None:
    """Refuse what pyhf's schema lets through from Python's JSON parser, or what breaks later code.

    NaN and infinities (``NaN``, ``Infinity``, ``1e400`` parse as floats),
    integers too large for a float, lone UTF-16 surrogates in strings or keys
    (``"\\ud800"`` parses, but cannot be encoded as UTF-8), and nesting deeper
    than :data:`MAX_NESTING`.  Iterative, so no input can exhaust the stack.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]

    def fail(message: str, parts: tuple[Any, ...]) -> InputError:
        return InputError(message, where=locate(list(parts)) if locate else _at(where, _pointer(parts)))

    while stack:
        node, parts = stack.pop()
        if len(parts) >= MAX_NESTING:
            raise fail(f"nested deeper than {MAX_NESTING} levels", parts)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, float):
                if not math.isfinite(value):
                    raise fail(f"non-finite number {value} (NaN and infinities are not numbers here)", (*parts, key))
            elif isinstance(value, (dict, list)):
                if value:
                    stack.append((value, (*parts, key)))
            elif isinstance(value, int):
                if abs(value) > _MAX_INT:
                    raise fail("number too large (beyond the range of a 64-bit float)", (*parts, key))
            elif isinstance(value, str):
                if _SURROGATE.search(value):
                    raise fail("string with a lone UTF-16 surrogate (not valid Unicode)", (*parts, key))
            if isinstance(key, str) and _SURROGATE.search(key):
                raise fail("key with a lone UTF-16 surrogate (not valid Unicode)", parts)


def check_values(doc: Any, where: str, dotted: bool = False) -> None:
    """Refuse what JSON lets in but no stored document may hold (InputError naming the JSON path).

    NaN and infinities, integers beyond a float, lone UTF-16 surrogates (in
    keys or strings: Redis and JSON responses encode text as UTF-8) and nesting
    deeper than :data:`MAX_NESTING`.  :func:`validate_workspace` and
    :func:`validate_patchset` do this themselves; use it for other user JSON
    the service keeps, such as the options of a job.  ``dotted``: name the
    place as ``options.poi_test`` rather than ``options /poi_test``.
    """
    locate = (lambda parts: ".".join([where, *map(str, parts)])[:200]) if dotted else None
    if isinstance(doc, (dict, list)):
        _scan(doc, where, locate)
    elif isinstance(doc, float) and not math.isfinite(doc):
        raise InputError(f"non-finite number {doc}", where=where)
    elif isinstance(doc, int) and not isinstance(doc, bool) and abs(doc) > _MAX_INT:
        raise InputError("number too large (beyond the range of a 64-bit float)", where=where)
    elif isinstance(doc, str) and _SURROGATE.search(doc):
        raise InputError("string with a lone UTF-16 surrogate (not valid Unicode)", where=where)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_NUMERIC = (int, float)


def _check_yields(
    values: Any, pointer: str, where: str, what: str, nbins: int | None = None, negative: bool = False
) -> None:
    """A list of finite numbers (``nbins`` of them if given); ``>= 0`` unless ``negative``.

    Published templates carry small negative bins (negative-weight Monte Carlo)
    and pyhf fits them, so sample yields, histosys templates and uncertainties
    may be negative; what must be a count (observations) may not.
    """
    if not isinstance(values, list):
        raise InputError(f"{what} must be a list of numbers, not {_json_type(values)}", where=_at(where, pointer))
    # fast path: one pass in C over a list of plain numbers (the detailed loop below only names the culprit)
    if values and all(type(y) in _NUMERIC for y in values):
        lo, hi = min(values), max(values)
        if -_MAX_INT <= lo and hi <= _MAX_INT and math.isfinite(lo) and math.isfinite(hi) and (negative or lo >= 0):
            if nbins is not None and len(values) != nbins:
                raise InputError(f"{what}: {len(values)} bins where the sample has {nbins}", where=_at(where, pointer))
            return
    for i, y in enumerate(values):
        if not _number(y):
            raise InputError(f"{what} must be numbers, not {_short(y, 40)}", where=_at(where, f"{pointer}/{i}"))
        if isinstance(y, float) and not math.isfinite(y) or isinstance(y, int) and abs(y) > _MAX_INT:
            raise InputError(f"{what} must be finite, not {_short(y, 40)}", where=_at(where, f"{pointer}/{i}"))
        if y < 0 and not negative:
            raise InputError(f"negative {what} {y}", where=_at(where, f"{pointer}/{i}"))
    if nbins is not None and len(values) != nbins:
        raise InputError(f"{what}: {len(values)} bins where the sample has {nbins}", where=_at(where, pointer))


def _check_sample(sample: Any, pointer: str, where: str, nbins: int | None) -> None:
    """The numbers of one sample: yields, and its modifiers' data (pyhf's schema checks only their types)."""
    if not isinstance(sample, dict):
        raise InputError(f"a sample must be a JSON object, not {_json_type(sample)}", where=_at(where, pointer))
    name = sample.get("name")
    if not isinstance(name, str):
        raise InputError(
            f"a sample needs a name (a string), not {_json_type(name)}", where=_at(where, f"{pointer}/name")
        )
    data = sample.get("data")
    _check_yields(data, f"{pointer}/data", where, f"yields of sample {_name(name)}", negative=True)
    n = len(data)
    if n == 0:
        raise InputError(f"sample {_name(name)} has no bins", where=_at(where, f"{pointer}/data"))
    if nbins is not None and n != nbins:
        raise InputError(
            f"sample {_name(name)} has {n} bins, its channel has {nbins}", where=_at(where, f"{pointer}/data")
        )
    modifiers = sample.get("modifiers", [])
    if not isinstance(modifiers, list):
        raise InputError(
            f"modifiers must be a list, not {_json_type(modifiers)}", where=_at(where, f"{pointer}/modifiers")
        )
    for mi, mod in enumerate(modifiers):
        mp = f"{pointer}/modifiers/{mi}"
        if not isinstance(mod, dict):
            raise InputError(f"a modifier must be a JSON object, not {_json_type(mod)}", where=_at(where, mp))
        kind, mdata = mod.get("type"), mod.get("data")
        if not isinstance(mod.get("name"), str):
            raise InputError(
                f"a modifier needs a name (a string), not {_json_type(mod.get('name'))}", where=_at(where, f"{mp}/name")
            )
        if kind not in _MODIFIER_TYPES:
            raise InputError(
                f"unknown modifier type {_short(kind, 60)} (pyhf has {', '.join(_MODIFIER_TYPES)})",
                where=_at(where, f"{mp}/type"),
            )
        label = f"{kind} {_name(mod.get('name'))}"
        if kind in ("normfactor", "shapefactor", "lumi") and mdata is not None:
            raise InputError(f"{label}: data must be null, not {_json_type(mdata)}", where=_at(where, f"{mp}/data"))
        if kind == "histosys":
            if not isinstance(mdata, dict):
                raise InputError(
                    f"{label}: data must be an object with hi_data and lo_data", where=_at(where, f"{mp}/data")
                )
            for side in ("hi_data", "lo_data"):
                _check_yields(mdata.get(side), f"{mp}/data/{side}", where, f"{label} {side}", nbins=n, negative=True)
        elif kind == "normsys":
            if not isinstance(mdata, dict):
                raise InputError(f"{label}: data must be an object with hi and lo", where=_at(where, f"{mp}/data"))
            for side in ("hi", "lo"):
                v = mdata.get(side)
                if not _number(v) or isinstance(v, float) and not math.isfinite(v) or abs(v) > _MAX_INT or v <= 0:
                    raise InputError(
                        f"{label}: {side} is a factor on the yield and must be a finite number > 0, not {_short(v, 40)}",
                        where=_at(where, f"{mp}/data/{side}"),
                    )
        elif kind in _PER_BIN_DATA:
            _check_yields(mdata, f"{mp}/data", where, f"{label} uncertainties", nbins=n, negative=True)


def _channel_bins(spec: dict[str, Any], ci: int, skip: int | None = None) -> int | None:
    """Bins of channel ``ci``: from a sample other than ``skip``, else from its observation."""
    channel = spec["channels"][ci]
    if not isinstance(channel, dict):
        return None
    samples = channel.get("samples")
    for si, sample in enumerate(samples if isinstance(samples, list) else []):
        if si != skip and isinstance(sample, dict) and isinstance(sample.get("data"), list):
            return len(sample["data"])
    for obs in spec.get("observations") or []:
        if isinstance(obs, dict) and obs.get("name") == channel.get("name") and isinstance(obs.get("data"), list):
            return len(obs["data"])
    return None


def _check_channel(
    spec: dict[str, Any], ci: int, where: str, samples: Iterable[int] | None = None, nbins: int | None = None
) -> None:
    """Unique sample names and each sample's numbers (all, or those at indices ``samples``) in channel ``ci``.

    ``nbins``: the channel's bins; default: from its other samples, else from its observation.
    """
    channel = spec["channels"][ci]
    if not isinstance(channel, dict) or not isinstance(channel.get("samples"), list):
        raise InputError("a channel must be an object with a list of samples", where=_at(where, f"/channels/{ci}"))
    names: set[Any] = set()
    for si, sample in enumerate(channel["samples"]):
        name = sample.get("name") if isinstance(sample, dict) else None
        if not isinstance(name, str):
            continue  # _check_sample says so
        if name in names:
            raise InputError(
                f"duplicate sample name {_name(name)} in channel {_name(channel.get('name'))}",
                where=_at(where, f"/channels/{ci}/samples/{si}/name"),
            )
        names.add(name)
    for si in range(len(channel["samples"])) if samples is None else samples:
        n = nbins if nbins is not None else _channel_bins(spec, ci, skip=si)
        _check_sample(channel["samples"][si], f"/channels/{ci}/samples/{si}", where, n)
    _check_rates(spec, ci, where)


def _check_rates(spec: dict[str, Any], ci: int, where: str) -> None:
    """The expected rate of each bin at the nominal point must be evaluable.

    Negative sample yields are fine (pyhf fits them) as long as their sum, the
    expected count at the nominal point, is positive, or zero where nothing
    was observed: a Poisson term needs a rate > 0 to explain observed events.
    """
    channel = spec["channels"][ci]
    samples = channel.get("samples") if isinstance(channel, dict) else None
    if not isinstance(samples, list) or not samples:
        return
    rows = [smp.get("data") for smp in samples if isinstance(smp, dict)]
    if not rows or not all(isinstance(r, list) for r in rows) or len({len(r) for r in rows}) != 1:
        return  # the sample checks say what is wrong
    if not all(isinstance(v, float) and math.isfinite(v) or _number(v) and abs(v) <= _MAX_INT for r in rows for v in r):
        return  # likewise (a patch may have put a string into a sample the checks did not visit)
    totals = [math.fsum(col) for col in zip(*rows)]
    if min(totals, default=0.0) > 0:
        return
    obs = next(
        (
            o.get("data")
            for o in spec.get("observations") or []
            if isinstance(o, dict) and o.get("name") == channel.get("name")
        ),
        None,
    )
    for b, total in enumerate(totals):
        n = obs[b] if isinstance(obs, list) and b < len(obs) and _number(obs[b]) else 0
        if total < 0 or (total == 0 and n > 0):
            what = "negative" if total < 0 else "zero, with observed events"
            raise InputError(
                f"the expected rate of bin {b} of channel {_name(channel.get('name'))} at the nominal point "
                f"(the sum of the samples' yields) is {what} ({total:g}): the likelihood cannot be evaluated there",
                where=_at(where, f"/channels/{ci}/samples"),
            )


def _check_observation(spec: dict[str, Any], oi: int, where: str) -> None:
    obs = spec["observations"][oi]
    if not isinstance(obs, dict):
        raise InputError(
            f"an observation must be a JSON object, not {_json_type(obs)}", where=_at(where, f"/observations/{oi}")
        )
    name = obs.get("name")
    nbins = None
    for ci, channel in enumerate(spec.get("channels") or []):
        if isinstance(channel, dict) and channel.get("name") == name:
            nbins = _channel_bins({"channels": spec["channels"]}, ci)  # from the samples
            break
    _check_yields(obs.get("data"), f"/observations/{oi}/data", where, f"observed counts of channel {_name(name)}")
    if nbins is not None and len(obs["data"]) != nbins:
        raise InputError(
            f"observations of channel {_name(name)} have {len(obs['data'])} bins, its samples {nbins}",
            where=_at(where, f"/observations/{oi}/data"),
        )


def _check_model(spec: dict[str, Any], where: str) -> None:
    """Everything numeric of a schema-valid workspace, and names that must be unique."""
    channels = {}
    for ci, channel in enumerate(spec["channels"]):
        if channel["name"] in channels:
            raise InputError(
                f"duplicate channel name {_name(channel['name'])}", where=_at(where, f"/channels/{ci}/name")
            )
        channels[channel["name"]] = ci
        _check_channel(spec, ci, where, nbins=len(channel["samples"][0]["data"]))
    observed = set()
    for oi, obs in enumerate(spec["observations"]):
        if obs["name"] in observed:
            raise InputError(
                f"duplicate observation of channel {_name(obs['name'])}", where=_at(where, f"/observations/{oi}/name")
            )
        observed.add(obs["name"])
        _check_observation(spec, oi, where)
    for name, ci in channels.items():
        if name not in observed:
            raise InputError(f"no observations for channel {_name(name)}", where=_at(where, "/observations"))
    seen = set()
    for mi, meas in enumerate(spec["measurements"]):
        if meas["name"] in seen:
            raise InputError(
                f"duplicate measurement name {_name(meas['name'])}", where=_at(where, f"/measurements/{mi}/name")
            )
        seen.add(meas["name"])


#: Keys only a workspace has, and keys only a patchset has (pyhf's schemas).
_WORKSPACE_KEYS, _PATCHSET_KEYS = {"channels", "observations", "measurements"}, {"patches"}


def _not_swapped(spec: dict[str, Any], expected: str, where: str) -> None:
    """Say "swapped" when a patchset is given as the workspace or the reverse.

    The schema alone answers "Additional properties are not allowed ('metadata', 'patches')",
    which does not tell a user that the two files are in the wrong order.
    """
    keys = set(spec)
    if expected == "workspace" and keys & _PATCHSET_KEYS and not keys & _WORKSPACE_KEYS:
        raise InputError(
            "this is a pyhf patchset (it has 'patches'), not a workspace: are the two files swapped? "
            "Give the background-only workspace first, then the patchset",
            where=where,
        )
    if expected == "patchset" and keys & _WORKSPACE_KEYS and not keys & _PATCHSET_KEYS:
        raise InputError(
            "this is a pyhf workspace (it has 'channels'), not a patchset: are the two files swapped? "
            "Give the background-only workspace first, then the patchset",
            where=where,
        )


def validate_workspace(spec: Any, where: str = "workspace") -> dict[str, Any]:
    """Validate a workspace: pyhf's schema, then what the schema lets through.

    Every error names the JSON path (``workspace /channels/0/samples/1/data/3``):
    non-finite or oversized numbers, negative yields, observed counts or
    histosys/staterror/shapesys data, normsys factors <= 0, bins that do not
    match, duplicate names, channels without observations.
    """
    if not isinstance(spec, dict):
        raise InputError(f"a workspace must be a JSON object, not {_json_type(spec)}", where=where)
    _not_swapped(spec, "workspace", where)
    _scan(spec, where)
    try:  # the schema sees only skeletons: check a small stand-in first, the whole document only to locate an error
        _schema_check(_reduced(spec), "workspace.json", "workspace", where)
    except InputError:
        _schema_check(spec, "workspace.json", "workspace", where)
    _check_model(spec, where)
    return spec


def _reduced(value: Any) -> Any:
    """A small JSON value that pyhf's schemas accept exactly when they accept ``value``.

    Lists of numbers keep at most two (the schemas ask for at least one, or
    exactly two for bounds); other lists keep one element per distinct
    :func:`_skeleton`.  Validating a 1 MB published workspace this way takes
    ~20 ms instead of ~0.7 s; an error is then located on the full document.
    """
    kind = type(value)
    if kind is dict:
        return {k: _reduced(v) for k, v in value.items()}
    if kind is list:
        if value and all(type(v) is float or type(v) is int for v in value):
            return value[:2]
        seen: dict[Any, Any] = {}
        for v in value:
            seen.setdefault(_skeleton(v), v)
        return [_reduced(v) for v in seen.values()]
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def check_measurement(
    spec: dict[str, Any], measurement: str | None = None, where: str = "workspace", poi: bool = True
) -> dict[str, Any]:
    """The measurement a fit uses exists and (``poi``) its POI is one parameter of the model.

    ``measurement`` is the name chosen in the options (None: the first one);
    an unknown name is an error at ``options.measurement``.  With a patchset
    the POI is usually added by the signal patch: check the background with
    ``poi=False`` and each patched model with ``poi=True``.  Cheap: stops at
    the first modifier named like the POI (searching each channel's samples
    from the last, where patches append the signal).
    """
    measurements = spec.get("measurements") or []
    if measurement is None:
        if not measurements:
            raise InputError("the workspace has no measurement", where=_at(where, "/measurements"))
        mi = 0
    else:
        names = [m.get("name") for m in measurements]
        if measurement not in names:
            known = ", ".join(map(_name, names[:10])) or "none"
            raise InputError(
                f"no measurement named {_name(measurement)} in {where} (it has {known})", where="options.measurement"
            )
        mi = names.index(measurement)
    meas = measurements[mi]
    if not poi:
        return meas
    name = (meas.get("config") or {}).get("poi")
    at = _at(where, f"/measurements/{mi}/config/poi")
    for ci, channel in enumerate(spec.get("channels") or []):
        for sample in reversed(channel.get("samples") or []):
            for mod in sample.get("modifiers") or []:
                if mod.get("name") == name:
                    if mod.get("type") in PER_BIN_PARAMETERS and len(sample.get("data") or []) > 1:
                        raise InputError(
                            f"the POI {_name(name)} of measurement {_name(meas.get('name'))} must be one parameter "
                            f"(a normfactor), not a {mod.get('type')} with one parameter per bin",
                            where=at,
                        )
                    return meas
    raise InputError(
        f"the POI {_name(name)} of measurement {_name(meas.get('name'))} is not a parameter of the model: no sample "
        f"has a modifier named {_name(name)} (a normfactor, usually added by the signal patch)",
        where=at,
    )


_OPS = {
    "add": ("path", "value"),
    "remove": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "from"),
    "copy": ("path", "from"),
    "test": ("path", "value"),
}


def _check_operations(spec: dict[str, Any], locate: Any) -> None:
    """Plain messages for bad JSON-patch operations (pyhf's schema says only "not valid under any of the given schemas")."""
    patches = spec.get("patches")
    for pi, patch in enumerate(patches if isinstance(patches, list) else []):
        ops = patch.get("patch") if isinstance(patch, dict) else None
        for oi, op in enumerate(ops if isinstance(ops, list) else []):
            at = ["patches", pi, "patch", oi]
            if not isinstance(op, dict):
                continue  # the schema names the type
            kind = op.get("op")
            if not isinstance(kind, str) or kind not in _OPS:
                raise InputError(
                    f"unknown JSON-patch operation {_short(kind, 60)} (expected one of {', '.join(_OPS)})",
                    where=locate([*at, "op"]),
                )
            for key in _OPS[kind]:
                if key not in op:
                    raise InputError(f"the {kind!r} operation needs {key!r}", where=locate(at))
            for key in ("path", "from"):
                value = op.get(key)
                if key in op and isinstance(value, str) and value and not value.startswith("/"):
                    raise InputError(
                        f"{key} {_short(value, 60)} is not a JSON pointer (it must be empty or start with '/')",
                        where=locate([*at, key]),
                    )


def validate_patchset(spec: Any, where: str = "patchset") -> dict[str, Any]:
    """Validate a patchset against pyhf's schema; reject duplicate patch names and unusable numbers.

    Errors inside a patch name it: ``patchset: patch 'X' /patches/3/patch/0/value/data/2``.
    """
    if not isinstance(spec, dict):
        raise InputError(f"a patchset must be a JSON object, not {_json_type(spec)}", where=where)
    _not_swapped(spec, "patchset", where)

    def locate(parts: list[Any]) -> str:
        if len(parts) >= 2 and parts[0] == "patches" and isinstance(parts[1], int):
            patches = spec.get("patches")
            try:
                name = patches[parts[1]]["metadata"]["name"]
            except (KeyError, IndexError, TypeError):
                name = None
            if isinstance(name, str):
                return _at(f"{where}: patch {_short(name, 80)}", _pointer(parts))
        return _at(where, _pointer(parts))

    _scan(spec, where, locate)
    _check_operations(spec, locate)
    _schema_check(spec, "patchset.json", "patchset", where, locate)
    seen: set[str] = set()
    for i, patch in enumerate(spec["patches"]):
        name = patch["metadata"]["name"]
        for j, value in enumerate(patch["metadata"]["values"]):
            if isinstance(value, bool):
                raise InputError(
                    f"grid values are numbers (or strings), not {_json_type(value)}",
                    where=locate(["patches", i, "metadata", "values", j]),
                )
        if name in seen:
            raise InputError(f"duplicate patch name {_name(name)}", where=f"{where} /patches/{i}/metadata/name")
        seen.add(name)
    return spec


def _cow_copy(doc: Any, pointers: Iterable[str]) -> Any:
    """Copy ``doc`` so that every container on the given JSON pointers is new.

    Containers off those paths stay shared with ``doc``; the copy can then be
    patched in place without touching ``doc``.
    """
    root = doc.copy() if isinstance(doc, (dict, list)) else doc
    for pointer in pointers:
        parts = jsonpointer.JsonPointer(pointer).parts
        node = root
        for part in parts[:-1]:
            key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
            try:
                child = node[key]
            except (KeyError, IndexError, TypeError):
                break
            if not isinstance(child, (dict, list)):
                break
            child = child.copy()
            node[key] = child
            node = child
    return root


def _index(part: Any, container: Any) -> int | None:
    """The list index a JSON-pointer part denotes in ``container`` after a patch (``-``: the last)."""
    if not isinstance(container, list) or not container:
        return None
    if part == "-":
        return len(container) - 1
    if isinstance(part, str) and part.isascii() and part.isdigit() and int(part) < len(container):
        return int(part)
    return None


def _check_touched(doc: Any, operations: Sequence[Any], where: str) -> None:
    """Check the numbers of what each operation put into ``doc`` (the patched workspace).

    Cheap (only the samples, channels or observations on the operations'
    paths), unlike validating the whole patched workspace against pyhf's schema
    (tens of ms per patch), which the engine does per hypothesis.
    """
    if not isinstance(doc, dict):
        raise InputError(f"the patched workspace is not a JSON object but {_json_type(doc)}", where=where)
    for op in operations:
        kind = op.get("op")
        if kind == "remove":  # what is left where something was removed
            _check_under(doc, op.get("path"), where, parent=True)
        elif kind in ("add", "replace", "copy", "move"):
            _check_under(doc, op.get("path"), where)
            if kind == "move":
                _check_under(doc, op.get("from"), where, parent=True)


_TOP_LEVEL = ("channels", "observations", "measurements", "version")


def _check_under(doc: dict[str, Any], path: Any, where: str, parent: bool = False) -> None:
    """Check the sample(s), channel(s) or observation(s) at or above JSON pointer ``path`` in ``doc``."""
    try:
        parts = jsonpointer.JsonPointer(path).parts
    except (jsonpointer.JsonPointerException, TypeError, AttributeError):
        return
    if parent:
        parts = parts[:-1]
    head = parts[0] if parts else None
    if head is not None and head not in _TOP_LEVEL:
        raise InputError(
            f"the patch changes {_short(head, 60)} at the top level of the workspace, which has only "
            f"{', '.join(_TOP_LEVEL)}",
            where=_at(where, _pointer(parts[:1])),
        )
    if head in (None, "channels"):
        channels = doc.get("channels")
        if not isinstance(channels, list):
            raise InputError(f"channels must be a list, not {_json_type(channels)}", where=_at(where, "/channels"))
        ci = _index(parts[1], channels) if len(parts) > 1 else None
        if len(parts) <= 1:
            for i in range(len(channels)):
                _check_channel(doc, i, where)
        elif ci is not None and (len(parts) == 2 or (parts[2] == "samples" and len(parts) == 3)):
            _check_channel(doc, ci, where)
        elif ci is not None and parts[2] == "samples" and isinstance(channels[ci], dict):
            si = _index(parts[3], channels[ci].get("samples"))
            if si is not None:
                _check_channel(doc, ci, where, samples=[si])
    if head in (None, "observations"):
        observations = doc.get("observations")
        if not isinstance(observations, list):
            raise InputError(
                f"observations must be a list, not {_json_type(observations)}", where=_at(where, "/observations")
            )
        oi = _index(parts[1], observations) if len(parts) > 1 else None
        for i in range(len(observations)) if len(parts) <= 1 else [oi] if oi is not None else []:
            _check_observation(doc, i, where)


_SAMPLE_OP = re.compile(r"^/channels/(0|[1-9][0-9]*)/samples/(0|[1-9][0-9]*|-)$")


def _add_samples(doc: Any, operations: Sequence[dict[str, Any]]) -> Any | None:
    """Apply a patch that only adds or replaces whole samples, in place; None for any other patch.

    The operations signal patchsets consist of.  ``jsonpatch`` deep-copies
    every added value (40% of the time to patch the 125 points of the 1Lbb
    pallet); here the patched workspace shares the samples with the patch,
    which nothing modifies afterwards.  RFC 6902 semantics: ``add`` inserts
    at an index up to the length (``-`` appends), ``replace`` needs an
    existing one; anything else goes to ``jsonpatch`` and its errors.
    """
    plan = []
    for op in operations:
        kind, match = op.get("op"), _SAMPLE_OP.match(op.get("path") or "") if isinstance(op.get("path"), str) else None
        if kind not in ("add", "replace") or match is None or "value" not in op:
            return None
        plan.append((kind, int(match.group(1)), match.group(2), op["value"]))
    channels = doc.get("channels") if isinstance(doc, dict) else None
    for kind, ci, index, value in plan:
        if not isinstance(channels, list) or ci >= len(channels) or not isinstance(channels[ci], dict):
            return None
        samples = channels[ci].get("samples")
        if not isinstance(samples, list):
            return None
        if index == "-":
            if kind != "add":
                return None
            samples.append(value)
            continue
        i = int(index)
        if kind == "add" and i <= len(samples):
            samples.insert(i, value)
        elif kind == "replace" and i < len(samples):
            samples[i] = value
        else:
            return None
    return doc


def apply_patch(bkg: dict[str, Any], operations: Sequence[dict[str, Any]], where: str) -> dict[str, Any]:
    """Apply JSON-patch ``operations`` to ``bkg`` without modifying it.

    Checks the numbers the patch brings (non-negative finite yields, positive
    normsys factors, matching bins) where it puts them; errors name the patch
    and the path in the patched workspace (``patchset: patch 'X' /channels/2/samples/4/data/3``).
    """
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise InputError("a patch must be a list of JSON-patch operations (objects)", where=where)
    try:
        pointers: list[str] = []
        for op in operations:
            pointers.append(op.get("path", ""))
            if "from" in op:
                pointers.append(op["from"])
        doc = _cow_copy(bkg, pointers)
        patched = _add_samples(doc, operations)
        if patched is None:
            patched = jsonpatch.apply_patch(doc, list(operations), in_place=True)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise InputError(f"patch does not apply: {exc}", where=where) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:  # malformed operations
        raise InputError(f"patch does not apply: {type(exc).__name__}: {_short(str(exc), 200)}", where=where) from None
    _check_touched(patched, operations, where)
    return patched


def expand_hypotheses(
    bkg: dict[str, Any],
    patches: Sequence[dict[str, Any]] | None,
    names: Sequence[str] | None = None,
    where: str = "patchset",
    validate: bool = True,
) -> list[Hypothesis]:
    """Turn a background workspace and its patches into hypotheses.

    ``patches`` are pyhf patch objects (``{"metadata": {...}, "patch": [...]}``);
    ``None`` means ``bkg`` is itself one full workspace.  ``names`` selects a
    subset (unknown names are an error).  Each patched workspace is validated
    against the schema unless ``validate`` is False (input validated upstream).
    """
    if patches is None:
        return [Hypothesis(name=_workspace_name(bkg), values=[], spec=bkg)]
    by_name = {p["metadata"]["name"]: p for p in patches}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"no patch named {', '.join(map(repr, missing))}", where=where)
        chosen = [by_name[n] for n in dict.fromkeys(names)]
    else:
        chosen = list(patches)
    hypotheses = []
    for patch in chosen:
        name = patch["metadata"]["name"]
        spec = apply_patch(bkg, patch["patch"], where=f"{where}: patch {name!r}")
        if validate:
            _validate_patched(spec, patch["patch"], where=f"{where}: patch {name!r}")
        hypotheses.append(Hypothesis(name=name, values=list(patch["metadata"].get("values", [])), spec=spec))
    return hypotheses


_SAMPLE_PATH = re.compile(r"^/channels/\d+/samples/(\d+|-)$")
#: skeletons of samples that passed pyhf's schema (see :func:`_skeleton`)
_VALID_SKELETONS: set[Any] = set()


def _skeleton(value: Any) -> Any:
    """What pyhf's sample schema can see of a JSON value: types, keys, list emptiness, the modifier types.

    The schema constrains samples only by types, required keys, ``minItems: 1``
    and the ``const`` of each modifier's ``type`` (no numeric ranges, no
    patterns on names), so two samples with one skeleton both pass or both
    fail; the engine validates each skeleton once (a 1Lbb signal patch costs
    ~40 ms per sample in jsonschema) and checks numbers itself.  Lists keep
    their distinct element skeletons, so a skeleton stays small.
    """
    kind = type(value)
    if kind is dict:
        return tuple([(k, v if k == "type" and type(v) is str else _skeleton(v)) for k, v in value.items()])
    if kind is list:
        if not value:
            return "[]"
        first = type(value[0])
        if (first is float or first is int) and all(type(v) is float or type(v) is int for v in value):
            return "[#]"
        return ("[", *dict.fromkeys([_skeleton(v) for v in value]))
    if kind is str:
        return "s"
    return kind.__name__


def _validate_patched(spec: dict[str, Any], operations: Sequence[dict[str, Any]], where: str) -> None:
    """Schema-check what a patch changed.

    Validating the whole patched workspace costs ~0.1 s per patch (hundreds
    of patches: tens of seconds), so the common case -- patches that add or
    replace whole samples -- validates just those samples, wrapped in a
    one-channel workspace; any other operation validates the full result.
    """
    if not all(op.get("op") in ("add", "replace") and _SAMPLE_PATH.match(op.get("path", "")) for op in operations):
        validate_workspace(spec, where=where)
        return
    fresh = [op.get("value") for op in operations if _skeleton(op.get("value")) not in _VALID_SKELETONS]
    if not fresh:
        return  # every added sample has a skeleton the schema accepted (its numbers were checked in apply_patch)
    together = {
        "channels": [{"name": "c", "samples": [_reduced(v) for v in fresh]}],
        "observations": [{"name": "c", "data": [0.0]}],
        "measurements": [{"name": "m", "config": {"poi": "p", "parameters": []}}],
        "version": "1.0.0",
    }
    try:  # one schema check for all of them; one per sample only to locate an error
        pyhf_schema.validate(together, "workspace.json")
    except pyhf_schema.SchemaError:
        pass
    else:
        if len(_VALID_SKELETONS) < 100_000:
            _VALID_SKELETONS.update(_skeleton(v) for v in fresh)
        return
    for op in operations:
        sample = op.get("value")
        n = len(sample.get("data", [])) if isinstance(sample, dict) and isinstance(sample.get("data"), list) else 1
        wrapper = {
            "channels": [{"name": "c", "samples": [sample]}],
            "observations": [{"name": "c", "data": [0.0] * n}],
            "measurements": [{"name": "m", "config": {"poi": "p", "parameters": []}}],
            "version": "1.0.0",
        }
        parts = op["path"].split("/")
        ci, si = int(parts[2]), parts[4]
        if si == "-":  # where the sample ended up (appended)
            samples = spec["channels"][ci]["samples"] if ci < len(spec["channels"]) else [None]
            si = str(len(samples) - 1)
        base = f"/channels/{ci}/samples/{si}"

        def locate(path: list[Any], base: str = base) -> str:
            inside = path[4:] if path[:4] == ["channels", 0, "samples", 0] else []
            return f"{where} {base}{_pointer(inside)}"

        skeleton = _skeleton(sample)
        if skeleton not in _VALID_SKELETONS:
            _schema_check(wrapper, "workspace.json", "sample", where, locate)
            if len(_VALID_SKELETONS) < 100_000:
                _VALID_SKELETONS.add(skeleton)
        # its numbers were checked where the patch put it (apply_patch)


def _workspace_name(spec: dict[str, Any]) -> str:
    measurements = spec.get("measurements") or [{}]
    return str(measurements[0].get("name", "workspace"))
