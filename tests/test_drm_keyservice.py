"""Key Services as deployed (issue 15): the CPIX client against the strict SPEKE v2 test
server with each authentication (Basic, Bearer, custom header, AWS SigV4 signed by botocore
and verified by recomputing the signature), the `X-Speke-Version` header however the server
reads it, each weak answer refused, and error messages that keep the server's status and
words with every secret masked."""

from __future__ import annotations

import base64
import logging
import urllib.request
import uuid
import xml.etree.ElementTree as ET

import pytest
from cpix_server import (
    FAIRPLAY,
    PLAYREADY,
    WIDEVINE,
    BearerCheck,
    CpixServer,
    HeaderCheck,
    SigV4Check,
    self_signed_certificate,
)

from drm import cpix
from drm.cpix import (
    AwsSigV4Authentication,
    BearerAuthentication,
    CpixClient,
    HeaderAuthentication,
    KeyRequest,
    KeyServiceError,
)

CONTENT_ID = "seed-issue-15"
ACCESS_KEY, SECRET_KEY = "AKIDVIPETEST0000001", "sigv4-secret-4b8e1f0a9c"
SESSION_TOKEN = "session-token-77c3a1"
TOKEN = "bearer-token-1f2e3d4c"
API_KEY = "api-key-value-9a8b7c"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp("keyservice-tls"))


def client(server: CpixServer, certificate, **options) -> CpixClient:
    options.setdefault("ca_file", str(certificate[0]))
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 5)
    if "authentication" not in options:
        return CpixClient(server.url, server.tenant, server.management_key, **options)
    return CpixClient(server.url, **options)


def requests(*groups: str | None) -> list[KeyRequest]:
    return [KeyRequest(uuid.uuid4(), group) for group in groups]


def assert_keys(keys, wanted) -> None:
    assert [k.key_id for k in keys] == [r.key_id for r in wanted]
    for key in keys:
        assert key.key == CpixServer.key_for(CONTENT_ID, key.key_id)


# ------------------------------------------------------------------------ the version header


@pytest.mark.parametrize("lookup", ["exact", "lower"])
def test_speke_version_header_is_read_however_the_server_reads_it(certificate, lookup):
    """The header goes on the wire once, spelled `X-Speke-Version` as the SPEKE v2 pages spell
    it: a handler matching that spelling and one behind a gateway that lower-cases names
    both read 2.0 (the strict server refuses the request otherwise)."""
    with CpixServer(certificate=certificate, header_lookup=lookup) as server:
        wanted = requests("AUDIO", "SD")
        assert_keys(client(server, certificate).request_keys(CONTENT_ID, wanted, "cbcs"), wanted)
        (raw,) = server.raw_headers
        assert [(n, v) for n, v in raw if n.lower() == "x-speke-version"] == [
            ("X-Speke-Version", "2.0")
        ]
        assert server.violations == [[]]


# ------------------------------------------------------------------------- authentication


def test_bearer_token_accepted_and_a_wrong_one_refused(certificate):
    with CpixServer(certificate=certificate, auth=BearerCheck(TOKEN)) as server:
        wanted = requests(None)
        keys = client(server, certificate, authentication=BearerAuthentication(TOKEN))
        assert_keys(keys.request_keys(CONTENT_ID, wanted, "cbcs"), wanted)
        assert server.headers[0]["Authorization"] == f"Bearer {TOKEN}"
        wrong = client(server, certificate, authentication=BearerAuthentication("not-it-0"))
        with pytest.raises(KeyServiceError) as raised:
            wrong.request_keys(CONTENT_ID, requests(None), "cbcs")
    message = str(raised.value)
    assert raised.value.status == 401 and not raised.value.transient
    assert "refused the Bearer token (HTTP 401); it said: " in message
    assert "the bearer token is not valid for this key provider" in message  # its own words
    assert "not-it-0" not in message and TOKEN not in message


def test_custom_header_accepted_and_a_wrong_value_refused(certificate):
    with CpixServer(certificate=certificate, auth=HeaderCheck("X-Api-Key", API_KEY)) as server:
        wanted = requests("AUDIO", "SD", "HD")
        good = client(
            server, certificate, authentication=HeaderAuthentication("X-Api-Key", API_KEY)
        )
        assert_keys(good.request_keys(CONTENT_ID, wanted, "cenc"), wanted)
        assert "Authorization" not in server.headers[0]
        bad = HeaderAuthentication("X-Api-Key", "wrong-api-key-1")
        with pytest.raises(KeyServiceError) as raised:
            client(server, certificate, authentication=bad).request_keys(
                CONTENT_ID, requests(None), "cenc"
            )
    assert raised.value.status == 403
    assert "refused the X-Api-Key header (HTTP 403); it said: " in str(raised.value)
    assert "Forbidden: invalid X-Api-Key" in str(raised.value)
    assert "wrong-api-key-1" not in str(raised.value)


def test_header_authentication_cannot_take_a_header_vipe_sets():
    for name in ("Host", "content-type", "X-Speke-Version", "bad name"):
        with pytest.raises(ValueError, match="cannot be an authentication header"):
            HeaderAuthentication(name, "x")


@pytest.mark.parametrize("lookup", ["exact", "lower"])
@pytest.mark.parametrize("token", [None, SESSION_TOKEN])
def test_sigv4_signed_by_botocore_is_verified(certificate, lookup, token, caplog):
    """Signed with botocore's SigV4Auth; the server recomputes the signature over the request
    as received (header names lower-cased by a gateway or not) and it matches. botocore's
    DEBUG dump of the canonical request (which holds the session token) is not logged."""
    caplog.set_level(logging.DEBUG)
    check = SigV4Check(ACCESS_KEY, SECRET_KEY, "eu-west-1", "execute-api", session_token=token)
    with CpixServer(certificate=certificate, auth=check, header_lookup=lookup) as server:
        auth = AwsSigV4Authentication("eu-west-1", "execute-api", ACCESS_KEY, SECRET_KEY, token)
        wanted = requests("AUDIO", "SD")
        assert_keys(
            client(server, certificate, authentication=auth).request_keys(
                CONTENT_ID, wanted, "cbcs"
            ),
            wanted,
        )
        assert check.verified == 1
        sent = server.headers[0]
        assert sent["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
        signed = sent["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert {"host", "x-amz-date", "x-speke-version", "content-type"} <= set(signed)
        assert ("x-amz-security-token" in signed) == (token is not None)
        assert SECRET_KEY not in repr(auth) and SECRET_KEY not in repr(sent)
        assert "Calculating signature" in caplog.text  # botocore did log, at DEBUG
        assert SECRET_KEY not in caplog.text and SESSION_TOKEN not in caplog.text


def test_sigv4_verifier_rejects_what_botocore_did_not_sign():
    """The verifier itself: a botocore-signed request passes; the same request with another
    body, another secret or an unsigned date fails with API Gateway's message."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    check = SigV4Check(ACCESS_KEY, SECRET_KEY)
    url = "http://127.0.0.1:8443/cpix/v2"

    def signed(secret: str, body: bytes) -> list[tuple[str, str]]:
        request = AWSRequest(method="POST", url=url, data=body, headers={"Host": "127.0.0.1:8443"})
        SigV4Auth(Credentials(ACCESS_KEY, secret), "execute-api", "us-east-1").add_auth(request)
        return [("Host", "127.0.0.1:8443"), *request.headers.items()]

    good = signed(SECRET_KEY, b"<cpix/>")
    assert check.verify("POST", url, good, b"<cpix/>") == (200, b"")
    status, answer = check.verify("POST", url, good, b"<cpix>tampered</cpix>")
    assert status == 403 and b"does not match the signature you provided" in answer
    status, answer = check.verify("POST", url, signed("other-secret", b"x"), b"x")
    assert status == 403 and b"does not match" in answer
    stale = [(n, "20200101T000000Z" if n == "X-Amz-Date" else v) for n, v in good]
    assert check.verify("POST", url, stale, b"<cpix/>")[0] == 403


def test_wrong_sigv4_secret_is_refused_with_the_servers_message(certificate):
    check = SigV4Check(ACCESS_KEY, SECRET_KEY)
    with CpixServer(certificate=certificate, auth=check) as server:
        wrong = AwsSigV4Authentication("us-east-1", "execute-api", ACCESS_KEY, "wrong-secret-5")
        with pytest.raises(KeyServiceError) as raised:
            client(server, certificate, authentication=wrong).request_keys(
                CONTENT_ID, requests(None), "cbcs"
            )
        assert len(server.requests) == 1  # a refusal is final
    message = str(raised.value)
    assert raised.value.status == 403
    assert "refused the AWS SigV4 signature (region us-east-1, service execute-api)" in message
    assert "(HTTP 403); it said: " in message and SigV4Check.MISMATCH in message
    assert "wrong-secret-5" not in message and SECRET_KEY not in message


def test_sigv4_without_credentials_uses_botocores_credential_chain(
    certificate, monkeypatch, tmp_path
):
    """No AccessKeyId/SecretAccessKey in the job: botocore's default chain (here the
    environment) gives them; with nothing anywhere, a clear refusal before any request."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    check = SigV4Check(ACCESS_KEY, SECRET_KEY, session_token=SESSION_TOKEN)
    with CpixServer(certificate=certificate, auth=check) as server:
        auth = AwsSigV4Authentication("us-east-1")
        wanted = requests(None)
        assert_keys(
            client(server, certificate, authentication=auth).request_keys(
                CONTENT_ID, wanted, "cbcs"
            ),
            wanted,
        )
        assert check.verified == 1
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name)
        with pytest.raises(KeyServiceError, match="no AWS credentials") as raised:
            client(
                server, certificate, authentication=AwsSigV4Authentication("us-east-1")
            ).request_keys(CONTENT_ID, requests(None), "cbcs")
        assert len(server.requests) == 1 and not raised.value.transient


# ------------------------------------------------------------------------- systems chosen


def test_a_system_the_server_lacks_fails_unless_the_job_leaves_it_out(certificate):
    """A provider not configured for PlayReady refuses a request that asks for it (400 with its
    reason); asking only for Widevine and FairPlay works."""
    with CpixServer(certificate=certificate, systems=[WIDEVINE, FAIRPLAY]) as server:
        with pytest.raises(KeyServiceError) as raised:
            client(server, certificate).request_keys(CONTENT_ID, requests(None), "cbcs")
        assert raised.value.status == 400 and str(PLAYREADY) in str(raised.value)
        wanted = requests("AUDIO", "SD")
        chosen = client(server, certificate, system_ids=[WIDEVINE, FAIRPLAY])
        keys = chosen.request_keys(CONTENT_ID, wanted, "cbcs")
        assert_keys(keys, wanted)
        assert all(set(k.signalling) == {WIDEVINE, FAIRPLAY} for k in keys)


def test_a_fixed_playready_seed_is_caught_and_avoided_by_choosing_systems(certificate):
    """A provider deriving PlayReady keys from one seed answers one key for every group: the
    answer is refused (MultiKey would silently be one key); without PlayReady it is fine."""
    with CpixServer(certificate=certificate) as server:
        server.fixed_playready_seed = True
        with pytest.raises(KeyServiceError, match="same content key for quality groups AUDIO"):
            client(server, certificate).request_keys(CONTENT_ID, requests("AUDIO", "SD"), "cenc")
        wanted = requests("AUDIO", "SD")
        assert_keys(
            client(server, certificate, system_ids=[WIDEVINE]).request_keys(
                CONTENT_ID, wanted, "cenc"
            ),
            wanted,
        )


# ---------------------------------------------------------------------------- weak answers


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("same_key", "returned the same content key for quality groups AUDIO and SD"),
        ("iv_is_key", "equal to its own content key"),
        ("iv_is_other_key", "equal to the content key of"),
        ("short_key", "returned a content key of 8 bytes"),
        ("long_key", "returned a content key of 32 bytes"),
        ("short_iv", "answered an explicitIV of 8 bytes"),
        ("empty_key", "returned an empty content key (PlainValue)"),
        ("unasked_kid", "which was not asked for"),
        ("missing_key", "did not return the content key for key id"),
    ],
)
def test_each_weak_answer_is_refused(certificate, mode, expected):
    with CpixServer(certificate=certificate) as server:
        server.mode = mode
        wanted = requests("AUDIO", "SD", "HD")
        with pytest.raises(KeyServiceError) as raised:
            client(server, certificate).request_keys(CONTENT_ID, wanted, "cbcs")
    message = str(raised.value)
    assert expected in message, message
    assert message.startswith(f"Key Service {server.url}: ")
    assert not raised.value.transient
    for request in wanted:  # no key material in the text
        key = CpixServer.key_for(CONTENT_ID, request.key_id)
        assert key.hex() not in message and base64.b64encode(key).decode() not in message
    if mode == "missing_key":
        assert str(wanted[-1].key_id) in message


def test_a_single_key_whose_iv_is_the_key_is_refused(certificate):
    with CpixServer(certificate=certificate) as server:
        server.mode = "iv_is_key"
        with pytest.raises(KeyServiceError, match="it would publish the key"):
            client(server, certificate).request_keys(CONTENT_ID, requests(None), "cbcs")


# ------------------------------------------------------------------------- error messages


def test_errors_keep_the_status_and_300_characters_of_the_body_secrets_masked(certificate, caplog):
    """A 500 whose body echoes the request's headers (the Authorization and the API key):
    the message has the status, at most 300 characters of the body, and no secret."""
    with CpixServer(certificate=certificate, auth=HeaderCheck("X-Api-Key", API_KEY)) as server:
        server.mode = "echo_500"
        auth = HeaderAuthentication("X-Api-Key", API_KEY)
        with caplog.at_level(logging.DEBUG), pytest.raises(KeyServiceError) as raised:
            client(server, certificate, authentication=auth, attempts=2).request_keys(
                CONTENT_ID, requests(None), "cbcs"
            )
    message = str(raised.value)
    assert raised.value.status == 500 and raised.value.transient
    assert "answered HTTP 500, 2 attempt(s); it said: internal error while handling" in message
    said = message.split("it said: ", 1)[1]
    assert said.endswith("…") and len(said) == 301
    assert "X-Api-Key: ***" in said
    assert API_KEY not in message and API_KEY not in caplog.text
    assert "HTTP 500; it said: internal error" in caplog.text  # the retry warning has it too


def test_basic_credentials_are_masked_in_an_echoed_body(certificate):
    with CpixServer(certificate=certificate) as server:
        server.mode = "echo_500"
        with pytest.raises(KeyServiceError) as raised:
            client(server, certificate, attempts=1).request_keys(CONTENT_ID, requests(None), "cbcs")
    token = base64.b64encode(f"{server.tenant}:{server.management_key}".encode()).decode()
    message = str(raised.value)
    assert "Authorization: Basic ***" in message
    assert token not in message and server.management_key not in message


def test_a_refusal_keeps_the_servers_words(certificate):
    with CpixServer(certificate=certificate) as server:
        server.mode = "unauthorized"
        with pytest.raises(KeyServiceError) as raised:
            client(server, certificate).request_keys(CONTENT_ID, requests(None), "cbcs")
    assert str(raised.value).endswith(
        f"refused the credentials of tenant {server.tenant} (HTTP 401); "
        "it said: <error>unauthorized</error>"
    )


def test_excerpt_masks_first_then_truncates():
    secret = "s3cr3t-value"
    text = cpix.excerpt((b"a\x00b\n" + secret.encode() + b" ") * 100, [secret])
    assert secret not in text and "***" in text and "\x00" not in text and "\n" not in text
    assert len(text) == cpix.EXCERPT_CHARS + 1 and text.endswith("…")


# ---------------------------------------------------------------------------- the opener


def test_the_client_sends_through_a_given_opener(certificate):
    """An engine hands CpixClient its own opener (its egress policy): every request goes
    through it."""
    seen: list[str] = []

    class Recorder(urllib.request.BaseHandler):
        handler_order = 100

        def https_request(self, request):
            seen.append(request.full_url)
            return request

    with CpixServer(certificate=certificate) as server:
        opener = cpix.build_opener(str(certificate[0]), Recorder())
        wanted = requests(None)
        keys = client(server, certificate, opener=opener, ca_file=None)
        assert_keys(keys.request_keys(CONTENT_ID, wanted, "cbcs"), wanted)
    assert seen == [server.url]


def test_speke_request_is_valid_for_every_job_shape():
    """Every request vipe can make (single key, each multi-key group set, cenc and cbcs,
    each choice of systems) passes the strict rules."""
    from cpix_server import check_request

    shapes = [[None], ["AUDIO", "SD"], ["AUDIO", "SD", "HD", "UHD1", "UHD2"], ["SD"]]
    choices = [[WIDEVINE], [PLAYREADY], [FAIRPLAY], [WIDEVINE, PLAYREADY, FAIRPLAY], []]
    for groups in shapes:
        for scheme in ("cenc", "cbcs"):
            for chosen in choices:
                document = cpix.build_request(CONTENT_ID, requests(*groups), scheme, chosen)
                assert check_request(ET.fromstring(document)) == [], (groups, scheme, chosen)
