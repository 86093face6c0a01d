"""The small CLI commands. `vipe validate`: exit 0 for a valid job, 2 for an invalid one, every
problem printed with its JSON path, `--strict` for unknown properties; `vipe certificate`."""

from __future__ import annotations

import json
from pathlib import Path

from engine.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "jobs"


def test_valid_examples_exit_0(capsys):
    for path in sorted(EXAMPLES.glob("*.json")):
        assert main(["validate", str(path)]) == 0, path.name
        assert "valid" in capsys.readouterr().err


def test_invalid_job_exits_2_and_names_every_field(tmp_path, capsys):
    job = json.loads((EXAMPLES / "minimal.json").read_text())
    job["ContentProcessing"]["OutputFormat"] = ["Cmaf", "Dash"]
    job["ContentProcessing"]["SegmentLengthInSeconds"] = 60
    del job["ContentPublishing"]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    assert main(["validate", str(path)]) == 2
    errors = capsys.readouterr().err
    for field in (
        "ContentProcessing.OutputFormat",
        "ContentProcessing.SegmentLengthInSeconds",
        "ContentPublishing",
    ):
        assert f"error {field}:" in errors, errors


def test_unknown_property_is_a_warning_or_in_strict_mode_an_error(tmp_path, capsys):
    job = json.loads((EXAMPLES / "minimal.json").read_text())
    job["ContentProcessing"]["Colour"] = "blue"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    assert main(["validate", str(path)]) == 0
    assert "warning ContentProcessing.Colour" in capsys.readouterr().err
    assert main(["validate", "--strict", str(path)]) == 2
    assert "error ContentProcessing.Colour: unknown property" in capsys.readouterr().err


def test_malformed_json_exits_2(tmp_path, capsys):
    path = tmp_path / "job.json"
    path.write_text("{not json")
    assert main(["validate", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_certificate_prints_the_key_that_jobs_are_protected_with(tmp_path, capsys):
    """`vipe certificate` prints base64 DER; a secret encrypted with it decrypts with the
    data folder's key, and the same certificate comes back on the next call."""
    import base64

    from cryptography import x509

    from drm.credentials import ServiceKey, encrypt_for_certificate

    assert main(["certificate", "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip()
    x509.load_der_x509_certificate(base64.b64decode(printed))
    secret = encrypt_for_certificate("s3cret", printed)
    assert ServiceKey.load_or_create(tmp_path).decrypt(secret, "Field") == "s3cret"
    assert main(["certificate", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == printed
