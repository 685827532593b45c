"""Options of a CLs scan, shared by the CLI, the service and remote workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fitserve.engine.errors import InputError

#: The ATLAS convention used with published likelihoods.
ATLAS_MODIFIER_SETTINGS: dict[str, dict[str, str]] = {
    "normsys": {"interpcode": "code4"},
    "histosys": {"interpcode": "code4p"},
}
#: The legacy HistFactory codes (pyhf's default before 0.7; since 0.7 pyhf defaults to code4/code4p too).
LEGACY_MODIFIER_SETTINGS: dict[str, dict[str, str]] = {
    "normsys": {"interpcode": "code1"},
    "histosys": {"interpcode": "code0"},
}
#: ``"pyhf"`` is kept as an alias of ``"legacy"`` for options written before the rename.
NAMED_MODIFIER_SETTINGS = {
    "atlas": ATLAS_MODIFIER_SETTINGS,
    "legacy": LEGACY_MODIFIER_SETTINGS,
    "pyhf": LEGACY_MODIFIER_SETTINGS,
}
PYHF_MODIFIER_SETTINGS = LEGACY_MODIFIER_SETTINGS  # old name


#: restarts of a small model when ``restarts`` is unset
AUTO_RESTARTS = 4
AUTO_RESTARTS_MAX_FREE = 8
#: most toys per distribution and hypothesis (memory: 16 bytes per toy and distribution)
MAX_TOYS = 10_000_000


class ScanOptions(BaseModel):
    """How each hypothesis is tested.

    ``modifier_settings`` is ``"atlas"`` (normsys code4, histosys code4p; the
    default, and pyhf's default since 0.7), ``"legacy"`` (code1 / code0, pyhf's
    default before 0.7; ``"pyhf"`` is an old alias) or an explicit pyhf
    ``modifier_settings`` mapping such as ``{"normsys": {"interpcode": "code4"}}``.

    ``restarts``: extra free and fixed-POI fits per hypothesis from spread
    starting points (the lowest minimum is kept; disagreeing fits flag the
    hypothesis ``multimodal``); unset, :data:`AUTO_RESTARTS` for models of at
    most :data:`AUTO_RESTARTS_MAX_FREE` free parameters (where local minima
    are common and fits cost next to nothing), none for larger ones.  ``limit_rtol``: relative tolerance of the
    upper-limit root finding.  ``limit_max``: how far the limit search goes
    (default: 10x the POI's upper bound).  ``widen_poi_bounds``: accept a
    ``poi_test`` outside the POI's bounds by widening them (pyhf refuses it,
    and so do we unless asked).

    ``calculator``: ``"asymptotics"`` (the asymptotic formulae, default) or
    ``"toybased"`` (pseudo-experiments, pyhf's ``ToyCalculator``; see
    :mod:`fitserve.engine.toys`) with ``n_toys`` toys per distribution drawn
    from ``seed``; ``toy_range`` ``[start, stop)`` runs only those toys (a
    chunk of a job; its records carry the raw test statistics for merging);
    ``toys_max_failed``: the fraction of failed toy fits above which a
    hypothesis is flagged.
    """

    model_config = ConfigDict(extra="forbid")

    test_stat: Literal["qtilde", "q", "q0"] = "qtilde"
    poi_test: float = Field(1.0, allow_inf_nan=False)
    limits: bool = False
    cls_only: bool = False
    confidence_level: float = Field(0.95, gt=0.0, lt=1.0)
    modifier_settings: str | dict[str, dict[str, str]] = "atlas"
    measurement: str | None = None
    restarts: int | None = Field(None, ge=0, le=16)
    limit_rtol: float = Field(1e-3, gt=0.0, le=0.1)
    limit_max: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    widen_poi_bounds: bool = False
    calculator: Literal["asymptotics", "toybased"] = "asymptotics"
    n_toys: int = Field(1000, ge=1, le=MAX_TOYS)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    toy_range: tuple[int, int] | None = None
    toys_max_failed: float = Field(0.01, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _toy_rules(self) -> ScanOptions:
        if self.calculator == "toybased" and self.limits:
            raise ValueError(
                "upper limits are computed with the asymptotic calculator only; "
                "set limits false or calculator 'asymptotics'"
            )
        if self.toy_range is not None:
            start, stop = self.toy_range
            if not 0 <= start < stop <= self.n_toys:
                raise ValueError(f"toy_range [{start}, {stop}) must lie inside [0, n_toys={self.n_toys})")
        return self

    def toys(self) -> tuple[int, int]:
        """The toys ``[start, stop)`` this run computes."""
        return self.toy_range if self.toy_range is not None else (0, self.n_toys)

    @field_validator("modifier_settings")
    @classmethod
    def _known_settings(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in NAMED_MODIFIER_SETTINGS:
            raise ValueError(f"unknown modifier_settings {value!r}: use 'atlas', 'legacy' or a mapping")
        if isinstance(value, dict):
            resolve_interpcodes(value)
        return value

    def restarts_for(self, n_free: int) -> int:
        """The restarts a hypothesis with ``n_free`` free parameters gets (``restarts``, or the automatic rule)."""
        if self.restarts is not None:
            return self.restarts
        return AUTO_RESTARTS if n_free <= AUTO_RESTARTS_MAX_FREE else 0

    def interpcodes(self) -> tuple[str, str]:
        """(normsys code, histosys code) for these options."""
        return resolve_interpcodes(self.modifier_settings)

    # rules about options that every room asks here ------------------------------------

    @property
    def discovery(self) -> bool:
        """``q0``: a discovery test (p0 reported as ``CLs_obs``); no POI value is tested, no upper limits."""
        return self.test_stat == "q0"

    @property
    def tested_poi(self) -> float:
        """The POI value the test is at: ``poi_test``, or 0 (the background) for ``q0``."""
        return 0.0 if self.discovery else self.poi_test

    def check_combination(self, where: str = "options") -> ScanOptions:
        """Raise :class:`InputError` for options valid one by one that cannot run together (limits with ``q0``)."""
        if self.limits and self.discovery:
            raise InputError(LIMITS_NEED_QMU, where=where)
        return self

    @property
    def exclusion_cls(self) -> float:
        """A hypothesis is excluded when its observed CLs is below this: ``1 - confidence_level``."""
        return 1.0 - self.confidence_level

    def excluded(self, cls_obs: float | None) -> bool | None:
        """Whether an observed CLs excludes the hypothesis at these options' CL (None: no CLs)."""
        return None if cls_obs is None else cls_obs < self.exclusion_cls

    @classmethod
    def parse(cls, raw: Any, where: str = "options") -> ScanOptions:
        """User options (a JSON object) as ScanOptions; InputError naming the option on anything wrong."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InputError("options must be a JSON object", where=where)
        try:
            opts = cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise InputError(err.get("msg", "invalid"), where=f"{where}.{loc}" if loc else where) from None
        return opts.check_combination(where=f"{where}.limits")

    @classmethod
    def stored(cls, doc: dict[str, Any] | None) -> ScanOptions:
        """The options of a stored job; a field another version wrote and this one does not know is skipped."""
        doc = dict(doc or {})
        try:
            return cls.model_validate(doc)
        except ValidationError:
            return cls.model_construct(**{k: v for k, v in doc.items() if k in cls.model_fields})


#: Upper limits are a CLs statement: the discovery statistic has none.
LIMITS_NEED_QMU = "upper limits need test_stat qtilde or q, not q0"


def resolve_interpcodes(settings: str | dict[str, dict[str, str]]) -> tuple[str, str]:
    """Turn a modifier-settings choice into ``(normsys_code, histosys_code)``."""
    if isinstance(settings, str):
        settings = NAMED_MODIFIER_SETTINGS[settings]
    normsys = settings.get("normsys", {}).get("interpcode", "code1")
    histosys = settings.get("histosys", {}).get("interpcode", "code0")
    if normsys not in ("code1", "code4"):
        raise ValueError(f"normsys interpcode {normsys!r} is not supported (code1, code4)")
    if histosys not in ("code0", "code4p"):
        raise ValueError(f"histosys interpcode {histosys!r} is not supported (code0, code4p)")
    return normsys, histosys
