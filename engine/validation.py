"""Validation of job JSON: every problem at once, each with the JSON path of its field.

`check_job` never raises for bad input: it returns the job or the list of field errors (plus
warnings for unknown properties). `validate_job` raises `JobValidationError` instead.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

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
    job: Job | None
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[FieldError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.job is not None and not self.errors


def load_job_json(source: dict | str | bytes | Path) -> Any:
    """A job as a dict, a JSON string/bytes, or a path to a JSON file -> parsed JSON.

    Raises JobValidationError for unreadable files and malformed JSON.
    """
    if isinstance(source, dict):
        return source
    if isinstance(source, Path):
        try:
            source = source.read_bytes()
        except OSError as error:
            message = f"cannot read {source}: {error.strerror}"
            raise JobValidationError([FieldError("$", message)]) from None
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
    try:
        job = Job.model_validate(normalized)
    except ValidationError as error:
        errors += _pydantic_errors(error, "")
        errors += _rules_despite_errors(normalized)
        return CheckedJob(None, _unique(errors), unknown)
    errors += _all_rules(job, "")
    if errors:
        return CheckedJob(None, _unique(errors), unknown)
    return CheckedJob(job, [], unknown)


def validate_job(source: dict | str | bytes | Path, *, strict: bool = False) -> CheckedJob:
    """Parse and validate a job; raise JobValidationError listing every problem."""
    checked = check_job(load_job_json(source), strict=strict)
    if not checked.valid:
        raise JobValidationError(checked.errors, checked.warnings)
    return checked


# ------------------------------------------------------------------------------------ helpers


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
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


def _rules_despite_errors(normalized: dict) -> list[FieldError]:
    """When field validation fails, still run the cross-field rules of what is valid, so that
    one run reports every problem: drop the invalid fields (or list items), validate again, and
    run the rules, for the whole job or else section by section."""
    found = _rules_after_pruning(TypeAdapter(Job), normalized, "")
    if found is not None:
        return found
    found = []
    for name, info in Job.model_fields.items():
        alias = info.alias or name
        if alias in normalized:
            adapter = TypeAdapter(info.annotation)
            found += _rules_after_pruning(adapter, normalized[alias], alias) or []
    return found


def _rules_after_pruning(adapter: TypeAdapter, data: Any, prefix: str) -> list[FieldError] | None:
    data = copy.deepcopy(data)
    pruned: list[str] = []
    for _ in range(5):
        try:
            model = adapter.validate_python(data)
        except ValidationError as error:
            locations = [item["loc"] for item in error.errors()]
            removed = [_prune(data, loc) for loc in locations]
            if not any(removed):
                return None
            pruned += [_join(prefix, p) if prefix else p for p in removed if p]
            continue
        return [
            e
            for e in _all_rules(model, prefix)
            if not any(e.field == p or e.field.startswith((p + ".", p + "[")) for p in pruned)
        ]
    return None


def _prune(data: Any, loc: tuple) -> str | None:
    """Remove what an error points at: the list field holding it when it is inside a list,
    else the key itself. Returns the JSON path removed, relative to `data`, or None."""
    container, path = data, ""
    for depth, part in enumerate(loc):
        if not isinstance(container, dict) or part not in container:
            return None
        value = container[part]
        if depth == len(loc) - 1 or isinstance(value, list):
            del container[part]
            return _join(path, part)
        container, path = value, _join(path, part)
    return None


def _unique(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))
