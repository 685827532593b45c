"""pyhf's JSON schemas, checked without importing pyhf.

The schemas are pyhf's own files (its package data, ``pyhf/schemas/1.0.0``),
so a workspace passes here exactly when it passes ``pyhf.schema.validate``:
the same Draft 6 validator, the same ``$ref`` resolution (every file has its
``$id``), the same best-matching error.  What this module saves is importing
``pyhf`` itself: its ``__init__`` loads its tensor backends and
``scipy.stats``, about 1 s of every engine process's start, more than a whole
small scan takes.  It also builds each validator once instead of once per call.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from referencing import Registry, Resource

#: the schema version pyhf writes and reads (``pyhf.schema.version``)
VERSION = "1.0.0"


class SchemaError(ValueError):
    """``spec`` does not match the schema; ``error`` is jsonschema's best-matching ValidationError."""

    def __init__(self, error: jsonschema.ValidationError, schema: str) -> None:
        super().__init__(f"{schema}: {error.message}")
        self.error = error


def schema_dir() -> Path:
    """pyhf's schema folder, found from its package's location (``find_spec`` runs no pyhf code)."""
    spec = importlib.util.find_spec("pyhf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyhf is not installed: its JSON schemas are needed to check workspaces")
    return Path(next(iter(spec.submodule_search_locations))) / "schemas" / VERSION


def _is_array(checker: Any, instance: Any) -> bool:
    """pyhf's ``allow_tensors`` arrays: lists and (numpy) tensors."""
    return isinstance(instance, (list, np.ndarray))


def _is_number(checker: Any, instance: Any) -> bool:
    """pyhf's ``allow_tensors`` numbers: any ``numbers.Number`` (booleans included) or numpy scalar."""
    return isinstance(instance, (numbers.Number, np.number))


#: Draft 6 with pyhf's type checker (``pyhf.schema.validator``), so the same documents pass
_Validator = jsonschema.validators.extend(
    jsonschema.Draft6Validator,
    type_checker=jsonschema.Draft6Validator.TYPE_CHECKER.redefine("array", _is_array).redefine("number", _is_number),
)


@cache
def _validator(name: str) -> Any:
    files = {p.name: json.loads(p.read_text()) for p in sorted(schema_dir().glob("*.json"))}
    # keyed by file name too: in Draft 6 an ``$id`` beside ``$ref`` is ignored, so pyhf's top-level
    # ``{"$ref": "defs.json#/..."}`` resolves against no base (pyhf passes the folder as base_uri)
    registry = Registry().with_resources(
        [(d["$id"], Resource.from_contents(d)) for d in files.values()]
        + [(n, Resource.from_contents(d)) for n, d in files.items()]
    )
    schema = files[name]
    return _Validator(schema, registry=registry, format_checker=None)


def validate(spec: Any, name: str) -> None:
    """Check ``spec`` against pyhf's schema ``name`` (``"workspace.json"``, ``"patchset.json"``, ...).

    Raises :class:`SchemaError` carrying the best-matching error, as pyhf's
    ``InvalidSpecification`` does.
    """
    try:
        _validator(name).validate(spec)
    except jsonschema.ValidationError as err:
        raise SchemaError(err, name) from None
