"""Property-based tests: `check_job` never raises for any JSON value, and always answers with
either a job or a non-empty list of errors.

Inputs are random JSON values and mutations of the valid example jobs: keys deleted, renamed in
another case or to unknown names, values replaced by random JSON (other types, strings, numbers,
nesting), enum-like strings changed in case, lists emptied or overfilled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.validation import CheckedJob, FieldError, check_job

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "jobs").glob("*.json"))
JOBS = [json.loads(p.read_text()) for p in EXAMPLES]

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Strings that reach the interesting code: enum values, URI schemes, regexes, base64, GUIDs.
INTERESTING = st.sampled_from(
    [
        "",
        " ",
        "None",
        "none",
        "Managed",
        "Base64Key",
        "DoNotEncode",
        "H265",
        "Cmaf",
        "dash",
        "5.1",
        "Local",
        "Http",
        "file:///tmp/x/",
        "file://relative/",
        "https://host/path/",
        "ftpes://host/",
        "(",
        "^(a+)+$",
        "(?P<lang>..)",
        "\\",
        "%",
        "preview_%.jpg",
        "00:00:05",
        "99:99:99",
        "AAECAwQFBgcICQoLDA0ODw==",
        "6c3e7bd1-8c10-4b4e-9d2a-6c2b0f0ae1a4",
        "EntityPath=q",
        "\x00",
        "\ud800",
        "x" * 3000,
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | INTERESTING
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | INTERESTING, children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, here: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (the root is the empty path)."""
    found = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*here, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*here, i))
    return found


def _parent(job: Any, path: tuple) -> Any:
    for step in path[:-1]:
        job = job[step]
    return job


def _swap_case(text: str, pattern: list[bool]) -> str:
    return "".join(
        c.upper() if pattern[i % len(pattern)] else c.lower() for i, c in enumerate(text)
    )


@st.composite
def mutated_jobs(draw: st.DrawFn) -> Any:
    """A valid example job with a few random mutations."""
    job = copy.deepcopy(draw(st.sampled_from(JOBS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(job)
        path = draw(st.sampled_from(paths))
        operation = draw(
            st.sampled_from(
                ["replace", "delete", "rename-case", "rename-unknown", "value-case", "grow", "wrap"]
            )
        )
        if not path:  # the root itself
            if operation == "replace":
                job = draw(JSON_VALUES)
            continue
        parent, key = _parent(job, path), path[-1]
        value = parent[key]
        if operation == "replace":
            parent[key] = draw(JSON_VALUES)
        elif operation == "delete":
            del parent[key]
        elif operation == "rename-case" and isinstance(key, str):
            pattern = draw(st.lists(st.booleans(), min_size=1, max_size=5))
            parent[_swap_case(key, pattern)] = parent.pop(key)
        elif operation == "rename-unknown" and isinstance(key, str):
            parent[key + draw(st.sampled_from(["X", "_", "s", "Id"]))] = parent.pop(key)
        elif operation == "value-case" and isinstance(value, str):
            pattern = draw(st.lists(st.booleans(), min_size=1, max_size=5))
            parent[key] = _swap_case(value, pattern)
        elif operation == "grow" and isinstance(value, list):
            parent[key] = value * draw(st.integers(min_value=0, max_value=8))
        elif operation == "wrap":
            parent[key] = draw(st.sampled_from([[value], {"Value": value}, json.dumps(value)]))
    return job


def _assert_well_formed(checked: Any) -> None:
    assert isinstance(checked, CheckedJob)
    assert all(isinstance(e, FieldError) for e in checked.errors + checked.warnings)
    assert all(isinstance(e.field, str) and isinstance(e.message, str) for e in checked.errors)
    if checked.job is None:
        assert checked.errors, "no job and no error"
    else:
        assert checked.errors == [] and checked.valid


@SETTINGS
@given(JSON_VALUES, st.booleans())
def test_random_json_never_raises(value: Any, strict: bool) -> None:
    _assert_well_formed(check_job(value, strict=strict))


@SETTINGS
@given(mutated_jobs(), st.booleans())
def test_mutated_jobs_never_raise(job: Any, strict: bool) -> None:
    _assert_well_formed(check_job(job, strict=strict))


@SETTINGS
@given(st.sampled_from(JOBS), st.lists(st.booleans(), min_size=1, max_size=7))
def test_key_case_never_matters(job: dict, pattern: list[bool]) -> None:
    """Renaming every key to another mix of cases gives the same job."""

    def recase(value: Any) -> Any:
        if isinstance(value, dict):
            return {_swap_case(k, pattern): recase(v) for k, v in value.items()}
        if isinstance(value, list):
            return [recase(v) for v in value]
        return value

    assert check_job(recase(job), strict=True).job == check_job(job).job
