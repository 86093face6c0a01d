"""Validation of job JSON: every problem at once, each with the JSON path of its field.

`check_job` never raises for bad input: it returns the job or the list of field errors (plus
warnings for unknown properties). `validate_job` raises `JobValidationError` instead, and
returns a `ValidJob`, whose `.job` is never None.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import JobValidationError
from engine.job import Job, JobModel


@dataclass(frozen=True)
class FieldError:
    """One problem of a job: `field` is its JSON path, e.g. `ContentProcessing.OutputFormat[1]`."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"Field": self.field, "Message": self.message}


@dataclass(frozen=True)
class CheckedJob:
    """The outcome of `check_job`: the job when valid, else every error; warnings either way."""

    job: Job | None
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[FieldError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.job is not None and not self.errors


@dataclass(frozen=True)
class ValidJob(CheckedJob):
    """The outcome of `validate_job`: a `CheckedJob` whose job is always there (no errors)."""

    job: Job


def load_job_json(source: dict | str | bytes | Path) -> Any:
    """A job as a dict, a JSON string/bytes, or a path to a JSON file -> parsed JSON.

    Raises JobValidationError for unreadable files and malformed JSON.
    """
    if isinstance(source, dict):
        return source
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as error:
            message = f"cannot read {source}: {error.strerror}"
            raise JobValidationError([FieldError("$", message)]) from None
        source = data
    try:
        return json.loads(source)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JobValidationError([FieldError("$", f"not valid JSON: {error}")]) from None


def check_job(source: Any, *, strict: bool = False) -> CheckedJob:
    """Validate parsed job JSON. Unknown properties are warnings, or errors when `strict`."""
    if not isinstance(source, dict):
        return CheckedJob(None, [FieldError("$", "the job must be a JSON object")])
    unknown: list[FieldError] = []
    errors: list[FieldError] = []
    normalized = _normalize(source, Job, "", unknown, errors)
    if strict:
        errors += [FieldError(u.field, "unknown property") for u in unknown]
        unknown = []
    unknown = _capped_warnings(unknown)
    try:
        job = Job.model_validate(normalized)
    except ValidationError as error:
        errors += _pydantic_errors(error, "")
        errors += _rules_despite_errors(Job, normalized, "")
        return CheckedJob(None, _unique(errors), unknown)
    errors += _all_rules(job, "")
    if errors:
        return CheckedJob(None, _unique(errors), unknown)
    return CheckedJob(job, [], unknown)


def validate_job(source: dict | str | bytes | Path, *, strict: bool = False) -> ValidJob:
    """Parse and validate a job; raise JobValidationError listing every problem."""
    checked = check_job(load_job_json(source), strict=strict)
    if checked.job is None or checked.errors:  # i.e. not checked.valid, spelled out to narrow
        raise JobValidationError(checked.errors, checked.warnings)
    return ValidJob(checked.job, checked.errors, checked.warnings)


# Unknown-property warnings kept per job: each one becomes a Warning event and a stored row,
# so a job with thousands of misspelled properties must not become thousands of events.
MAX_UNKNOWN_WARNINGS = 20


def _capped_warnings(unknown: list[FieldError]) -> list[FieldError]:
    """The first `MAX_UNKNOWN_WARNINGS` warnings, then one that counts the rest."""
    if len(unknown) <= MAX_UNKNOWN_WARNINGS:
        return unknown
    rest = len(unknown) - MAX_UNKNOWN_WARNINGS
    summary = FieldError(
        "$",
        f"{rest} more unknown properties (not listed; only the first {MAX_UNKNOWN_WARNINGS} are)",
    )
    return [*unknown[:MAX_UNKNOWN_WARNINGS], summary]


# ------------------------------------------------------------------------------------ helpers


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _nested_model(annotation: Any) -> tuple[type[JobModel] | None, bool]:
    """The JobModel inside an annotation such as `X | None` or `list[X] | None`, and whether
    it is a list of them."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nested_model(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found[0] is not None:
                return found
        return None, False
    if origin is list:
        inner, _ = _nested_model(typing.get_args(annotation)[0])
        return inner, inner is not None
    if isinstance(annotation, type) and issubclass(annotation, JobModel):
        return annotation, False
    return None, False


def _normalize(raw: Any, model: type[BaseModel], path: str, unknown: list, errors: list) -> Any:
    """Map keys case-insensitively onto the model's JSON names, drop and record unknown ones."""
    if not isinstance(raw, dict):
        return raw
    by_lower: dict[str, tuple[str, Any]] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        by_lower[alias.lower()] = (alias, info.annotation)
    for old, alias in getattr(model, "legacy_names", {}).items():
        by_lower[old] = (alias, model.model_fields[_name_of(model, alias)].annotation)
    result: dict[str, Any] = {}
    for key, value in raw.items():
        here = _join(path, str(key))
        match = by_lower.get(str(key).lower())
        if match is None:
            unknown.append(FieldError(here, "unknown property (ignored)"))
            continue
        alias, annotation = match
        if alias in result:
            errors.append(FieldError(here, f"{alias} is given twice (names ignore case)"))
            continue
        inner, is_list = _nested_model(annotation)
        if inner is not None and is_list and isinstance(value, list):
            value = [
                _normalize(item, inner, _join(_join(path, alias), i), unknown, errors)
                for i, item in enumerate(value)
            ]
        elif inner is not None:
            value = _normalize(value, inner, _join(path, alias), unknown, errors)
        result[alias] = value
    return result


def _name_of(model: type[BaseModel], alias: str) -> str:
    for name, info in model.model_fields.items():
        if (info.alias or name) == alias:
            return name
    raise KeyError(alias)


_MESSAGES = {"missing": "required", "model_type": "must be a JSON object"}


def _pydantic_errors(error: ValidationError, prefix: str) -> list[FieldError]:
    found = []
    for item in error.errors(include_url=False, include_input=False):
        path = prefix
        for part in item["loc"]:
            path = _join(path, part)
        message = _MESSAGES.get(item["type"], item["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        found.append(FieldError(path or "$", message))
    return found


def _all_rules(model: Any, path: str) -> list[FieldError]:
    """Cross-field rules of a model and of every model inside it."""
    found: list[FieldError] = []
    if isinstance(model, JobModel):
        found += [FieldError(_join(path, where), message) for where, message in model.rules()]
        for name, info in type(model).model_fields.items():
            found += _all_rules(getattr(model, name), _join(path, info.alias or name))
    elif isinstance(model, list):
        for i, item in enumerate(model):
            found += _all_rules(item, _join(path, i))
    return found


def _rules_despite_errors(model: type[JobModel], raw: Any, path: str) -> list[FieldError]:
    """The cross-field rules of whatever is valid in `raw`, although the whole does not validate,
    so that one run reports every problem.

    Each nested section and each list item is checked on its own, at its own path. A model's own
    rules run on a copy without its invalid fields (and list items); a problem that speaks of a
    removed field is dropped, and a removed enum or bool field is tried with every value it can
    take, keeping only the problems found whatever the user meant: a default standing in for an
    invalid value must not cause follow-up errors.
    """
    if not isinstance(raw, dict):
        return []
    try:
        return _all_rules(model.model_validate(raw), path)
    except ValidationError as error:
        locations = [item["loc"] for item in error.errors(include_url=False, include_input=False)]
    found: list[FieldError] = []
    for alias, value in raw.items():
        try:
            annotation = model.model_fields[_name_of(model, alias)].annotation
        except KeyError:  # not a JSON name of this model (keys are normalised before)
            continue
        inner, is_list = _nested_model(annotation)
        if inner is None:
            continue
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                found += _rules_despite_errors(inner, item, _join(_join(path, alias), i))
        elif not is_list:
            found += _rules_despite_errors(inner, value, _join(path, alias))
    found += _own_rules_after_pruning(model, raw, locations, path)
    return found


_MAX_VARIANTS = 64  # combinations of removed enum/bool values to try before giving up


def _own_rules_after_pruning(
    model: type[JobModel], raw: dict, locations: list[tuple], path: str
) -> list[FieldError]:
    """The model's own `rules()` once its invalid fields and list items are removed (a shallow
    copy: nested values are shared, never changed); [] when it cannot be built without them."""
    data = dict(raw)
    removed: list[str] = []
    for _ in range(5):
        changed = False
        drop_items: dict[str, set[int]] = {}
        for loc in locations:
            if not loc or loc[0] not in data:
                continue
            key = loc[0]
            if isinstance(data[key], list) and len(loc) > 1 and isinstance(loc[1], int):
                drop_items.setdefault(key, set()).add(loc[1])
            else:
                del data[key]
                removed.append(key)
            changed = True
        for key, indices in drop_items.items():
            if key in data:
                data[key] = [item for i, item in enumerate(data[key]) if i not in indices]
        if not changed:
            return []
        try:
            model.model_validate(data)
        except ValidationError as error:
            locations = [
                item["loc"] for item in error.errors(include_url=False, include_input=False)
            ]
            continue
        break
    else:
        return []
    variants: list[dict[str, Any]] = [{}]
    for key in removed:
        domain = _finite_domain(model.model_fields[_name_of(model, key)].annotation)
        if domain is None:
            continue  # left out: its default stands in, and rules about it are dropped below
        variants = [dict(v, **{key: value}) for v in variants for value in domain]
        if len(variants) > _MAX_VARIANTS:
            return []
    common: list[tuple[str, str]] | None = None
    for variant in variants:
        try:
            instance = model.model_validate({**data, **variant})
        except ValidationError:
            continue
        problems = list(dict.fromkeys(instance.rules()))
        common = problems if common is None else [p for p in common if p in problems]
    return [
        FieldError(_join(path, where), message)
        for where, message in common or []
        if not any(_speaks_of(key, where, message) for key in removed)
    ]


def _speaks_of(key: str, where: str, message: str) -> bool:
    """Whether a rule's problem is about field `key`: at its path, or naming it (a rule such as
    'give Width, Height or both' fired only because the invalid Width was removed)."""
    if where == key or where.startswith((key + ".", key + "[")):
        return True
    return re.search(rf"\b{re.escape(key)}\b", message) is not None


def _finite_domain(annotation: Any) -> list[Any] | None:
    """Every value of an enum or bool field (None excluded), or None for any other type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _finite_domain(args[0]) if len(args) == 1 else None
    if annotation is bool:
        return [True, False]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return list(annotation)
    return None


def _unique(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))
