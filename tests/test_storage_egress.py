"""The egress policy (storage/egress.py) and the storage providers held to it.

With a restricted policy, a job's storage locations reach loopback, link-local, private,
multicast, unspecified and reserved addresses only through an `--allow-network` network: the
refused destination (a real listener) sees no connection, the error is StorageError kind
`denied` naming the field and the rule, whatever the numeric spelling of the address. With a
network that admits 127.0.0.0/8 the same servers work. Unrestricted (the default) nothing
changes (the rest of the storage suite runs that way).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from egress_helpers import RULE, Listener, TinyHttp, can_bind, fake_resolver
from servers import azure_target, fast_storage_settings, ftp_target, s3_target

from storage import StorageError, StorageLocation, open_storage
from storage.egress import (
    UNRESTRICTED,
    EgressDenied,
    EgressPolicy,
    address_rule,
    parse_numeric_host,
)

RESTRICTED = EgressPolicy(restricted=True)
LOOPBACK_ALLOWED = EgressPolicy.from_cidrs(["127.0.0.0/8"])
FIELD = "ContentAcquisition.UriPath"
OUT_FIELD = "ContentPublishing.UriPath"
PAYLOAD = b"not really a movie, but bytes all the same" * 50

# Every spelling of 127.0.0.1 the C resolver accepts, and names for it.
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f.1",
    "127.1",
    "127.0.1",
    "017700000001",
    "0x7f000001",
    "0177.0.0.1",
    "0x7F.0.0.0x1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "localhost",
]


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def tiny_http():
    server = TinyHttp()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    fast_storage_settings(monkeypatch)


def refused(error: BaseException, field: str, rule: str) -> None:
    """A refusal: kind denied, not retryable, naming the field and the rule."""
    assert isinstance(error, StorageError), repr(error)
    assert error.kind == "denied", str(error)
    assert not error.retryable
    assert f"{field}: " in str(error), str(error)
    assert f"is {rule}; {RULE}" in str(error) or f"which is {rule}; {RULE}" in str(error)


# ------------------------------------------------------------------------------ the policy


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS[:-1])
def test_numeric_spellings_normalise_to_loopback(spelling):
    address = parse_numeric_host(spelling)
    assert address is not None
    assert address_rule(address) == "loopback"


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped: judged by its IPv4
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),  # NAT64 of a public address
    ],
)
def test_address_rules(address, rule):
    assert address_rule(ipaddress.ip_address(address)) == rule
    assert RESTRICTED.admits(ipaddress.ip_address(address)) is (rule is None)
    assert UNRESTRICTED.admits(ipaddress.ip_address(address))


def test_allowed_networks_admit_their_addresses_only():
    policy = EgressPolicy.from_cidrs(["10.0.0.0/8, fd00::/8", " 192.168.7.7 ", ""])
    assert policy.restricted
    assert [str(n) for n in policy.allowed] == ["10.0.0.0/8", "fd00::/8", "192.168.7.7/32"]
    assert policy.admits(ipaddress.ip_address("10.200.0.1"))
    assert policy.admits(ipaddress.ip_address("::ffff:10.0.0.1"))  # mapped into an allowed one
    assert policy.admits(ipaddress.ip_address("fd12::1"))
    assert policy.admits(ipaddress.ip_address("192.168.7.7"))
    assert not policy.admits(ipaddress.ip_address("192.168.7.8"))
    assert not policy.admits(ipaddress.ip_address("127.0.0.1"))
    assert policy.admits(ipaddress.ip_address("1.1.1.1"))  # public addresses always


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "localhost", "10.0.0", "fd00::/129", "10.0.0.0/8x"])
def test_a_bad_cidr_is_a_clear_value_error(bad):
    with pytest.raises(ValueError, match=r"--allow-network: .* is not a network"):
        EgressPolicy.from_cidrs(["10.0.0.0/8", bad])


def test_check_host_names_the_field_and_the_rule():
    with pytest.raises(EgressDenied) as caught:
        RESTRICTED.check_host("127.0.0.1", 80, FIELD)
    assert str(caught.value) == f"{FIELD}: address 127.0.0.1 is loopback; {RULE}"
    assert caught.value.kind == "denied"
    with pytest.raises(EgressDenied) as caught:
        RESTRICTED.check_host("0x7f.1", 80, FIELD)
    assert str(caught.value) == f"{FIELD}: 0x7f.1 is address 127.0.0.1, which is loopback; {RULE}"
    addresses = LOOPBACK_ALLOWED.check_host("2130706433", 80, FIELD)
    assert [str(a) for a in addresses] == ["127.0.0.1"]


def test_a_name_with_mixed_answers_connects_only_to_admitted_addresses(monkeypatch):
    if not can_bind("127.0.0.2"):
        pytest.skip("127.0.0.2 is not a usable loopback address here")
    good = Listener("127.0.0.1")
    bad = Listener("127.0.0.2", good.port)  # the same port: only the address decides
    try:
        lookups = fake_resolver(
            monkeypatch, {"mixed.example": lambda _: ["127.0.0.2", "127.0.0.1"]}
        )
        policy = EgressPolicy.from_cidrs(["127.0.0.1/32"])
        policy.create_connection(("mixed.example", good.port), 5, what=FIELD).close()
        assert good.seen() == 1
        assert bad.seen() == 0
        assert lookups["mixed.example"] == 1  # resolved once, connected to what was checked
    finally:
        good.close()
        bad.close()


# ------------------------------------------------------------------------------ Http input


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_http_input_to_a_loopback_listener_is_refused_in_every_spelling(
    listener, spelling, tmp_path
):
    location = StorageLocation(
        "Http", f"http://{spelling}:{listener.port}/movie.mp4", egress=RESTRICTED, field=FIELD
    )
    with pytest.raises(StorageError) as caught:
        open_storage(location).download_folder(tmp_path / "in")
    refused(caught.value, FIELD, "loopback")
    assert listener.seen() == 0
    assert not (tmp_path / "in").exists() or not any((tmp_path / "in").iterdir())


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "0xa9fea9fe", "2852039166", "[::ffff:169.254.169.254]"]
)
def test_http_input_to_the_link_local_metadata_address_is_refused(host, tmp_path):
    location = StorageLocation(
        "Http", f"http://{host}/latest/meta-data/credentials", egress=RESTRICTED, field=FIELD
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(location).list_files()
    refused(caught.value, FIELD, "link-local")
    assert "169.254.169.254" in str(caught.value)
    assert time.monotonic() - started < 2  # refused before any connection attempt


def test_the_refusal_reads_the_same_whether_something_listens_or_not(listener):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    messages = []
    for port in (listener.port, dead_port):
        location = StorageLocation(
            "Http", f"http://127.0.0.1:{port}/a.mp4", egress=RESTRICTED, field=FIELD
        )
        with pytest.raises(StorageError) as caught:
            open_storage(location).list_files()
        messages.append(str(caught.value).replace(str(port), "PORT"))
    assert messages[0] == messages[1]
    assert messages[0].endswith(f"{FIELD}: address 127.0.0.1 is loopback; {RULE}")
    assert listener.seen() == 0


def test_http_input_unrestricted_by_default_still_connects(listener):
    location = StorageLocation("Http", f"http://127.0.0.1:{listener.port}/movie.mp4")
    assert location.egress == UNRESTRICTED
    with pytest.raises(StorageError) as caught:
        open_storage(location).list_files()
    assert caught.value.kind == "unreachable"  # the listener hung up: today's behaviour
    assert listener.seen() >= 1


def test_http_input_allowed_with_an_admitting_network(http_server, tmp_path):
    (http_server.root / "allowed.mp4").write_bytes(PAYLOAD)
    location = StorageLocation(
        "Http",
        http_server.url("allowed.mp4"),
        http_server.user,
        http_server.password,
        egress=LOOPBACK_ALLOWED,
        field=FIELD,
    )
    paths = open_storage(location).download_folder(tmp_path / "in")
    assert [p.read_bytes() for p in paths] == [PAYLOAD]


def test_https_input_keeps_sni_and_the_certificate_check_on_the_host_name(
    tls_files, monkeypatch, tmp_path
):
    server = TinyHttp(tls=tls_files)
    try:
        server.file("/movie.mp4", PAYLOAD)
        policy = EgressPolicy.from_cidrs(["127.0.0.0/8", "::1/128"])
        location = StorageLocation(
            "Http", server.url("/movie.mp4", host="localhost"), egress=policy, field=FIELD
        )
        # Without the test CA the certificate is not trusted: verification is on.
        with pytest.raises(StorageError, match="certificate not trusted"):
            open_storage(location).list_files()
        monkeypatch.setenv("VIPE_HTTP_CA_FILE", str(tls_files.ca_file))
        paths = open_storage(location).download_folder(tmp_path / "in")
        assert [p.read_bytes() for p in paths] == [PAYLOAD]
        # Connected to the checked address, TLS still spoke to the name.
        assert set(server.server_names) == {"localhost"}
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("127.0.0.2", "loopback"),
        ("2130706434", "loopback"),
        ("0x7f.2", "loopback"),
        ("[::ffff:127.0.0.2]", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
    ],
)
def test_a_redirect_from_an_allowed_host_to_a_refused_address_is_refused(
    tiny_http, target, rule, tmp_path
):
    if not can_bind("127.0.0.2"):
        pytest.skip("127.0.0.2 is not a usable loopback address here")
    elsewhere = Listener("127.0.0.2")
    try:
        port = elsewhere.port
        tiny_http.redirect("/r/movie.mp4", f"http://{target}:{port}/movie.mp4")
        policy = EgressPolicy.from_cidrs(["127.0.0.1/32"])  # the first host only
        location = StorageLocation(
            "Http", tiny_http.url("/r/movie.mp4"), egress=policy, field=FIELD
        )
        with pytest.raises(StorageError) as caught:
            open_storage(location).download_folder(tmp_path / "in")
        refused(caught.value, f"{FIELD} (redirect)", rule)
        assert tiny_http.requests == ["/r/movie.mp4"]  # the allowed host was asked, once
        assert elsewhere.seen() == 0
    finally:
        elsewhere.close()


def test_a_redirect_to_an_admitted_address_is_followed(tiny_http, tmp_path):
    tiny_http.file("/movie.mp4", PAYLOAD)
    tiny_http.redirect("/r/movie.mp4", tiny_http.url("/movie.mp4", host="0x7f.1"))
    location = StorageLocation(
        "Http", tiny_http.url("/r/movie.mp4"), egress=LOOPBACK_ALLOWED, field=FIELD
    )
    paths = open_storage(location).download_folder(tmp_path / "in")
    assert [p.read_bytes() for p in paths] == [PAYLOAD]
    assert "/movie.mp4" in tiny_http.requests


def test_http_input_resolves_once_per_connection(tiny_http, monkeypatch, tmp_path):
    tiny_http.file("/movie.mp4", PAYLOAD)
    lookups = fake_resolver(monkeypatch, {"media.example": lambda _: ["127.0.0.1"]})
    location = StorageLocation(
        "Http", tiny_http.url("/movie.mp4", host="media.example"), egress=LOOPBACK_ALLOWED
    )
    open_storage(location).download_folder(tmp_path / "in")
    # No separate "check" lookup before a "connect" lookup that could answer differently.
    assert lookups["media.example"] == len(tiny_http.requests) == 2


# ------------------------------------------------------------------------------ S3Compatible


def test_s3_compatible_to_a_loopback_listener_is_refused(listener, tmp_path):
    location = StorageLocation(
        "S3Compatible",
        f"http://127.0.0.1:{listener.port}/bucket/folder/",
        "AKIAEXAMPLE",
        "s3-Secret-Value-42",
        egress=RESTRICTED,
        field=OUT_FIELD,
    )
    source = tmp_path / "a.m4s"
    source.write_bytes(PAYLOAD)
    storage = open_storage(location)
    for operation in (storage.check_access, lambda: storage.upload_file(source, "a.m4s")):
        with pytest.raises(StorageError) as caught:
            operation()
        refused(caught.value, OUT_FIELD, "loopback")
        assert "s3-Secret-Value-42" not in str(caught.value)
    assert listener.seen() == 0


def test_s3_compatible_allowed_with_an_admitting_network(moto_server, tmp_path):
    target = s3_target(moto_server, moto_server.create_bucket())
    target.put("in.mp4", PAYLOAD)
    storage = open_storage(replace(target.location, egress=LOOPBACK_ALLOWED, field=OUT_FIELD))
    assert [f.name for f in storage.list_files()] == ["in.mp4"]
    storage.download_file("in.mp4", tmp_path / "in.mp4")
    assert (tmp_path / "in.mp4").read_bytes() == PAYLOAD
    storage.upload_file(tmp_path / "in.mp4", "out/copy.mp4")
    assert target.get("out/copy.mp4") == PAYLOAD
    storage.close()


def test_s3_connections_are_checked_again_at_connect_time(moto_server, monkeypatch, tmp_path):
    """DNS rebinding: the endpoint passes the check when the client is made, then the name
    answers another address; botocore's connections are checked themselves, so that address
    is refused and never sees a connection."""
    if not can_bind("127.0.0.2"):
        pytest.skip("127.0.0.2 is not a usable loopback address here")
    port = int(moto_server.endpoint.rsplit(":", 1)[1])
    rebound = Listener("127.0.0.2", port)
    try:
        fake_resolver(
            monkeypatch,
            {"s3.rebind.example": lambda n: ["127.0.0.1"] if n == 0 else ["127.0.0.2"]},
        )
        bucket = moto_server.create_bucket()
        location = StorageLocation(
            "S3Compatible",
            f"http://s3.rebind.example:{port}/{bucket}/folder/",
            moto_server.access_key,
            moto_server.secret_key,
            egress=EgressPolicy.from_cidrs(["127.0.0.1/32"]),
            field=OUT_FIELD,
        )
        with pytest.raises(StorageError) as caught:
            open_storage(location).list_files()
        refused(caught.value, OUT_FIELD, "loopback")
        assert "127.0.0.2" in str(caught.value)
        assert rebound.seen() == 0
    finally:
        rebound.close()


# ------------------------------------------------------------------------------ AzureBlob


def test_azure_to_a_loopback_listener_is_refused(listener, tmp_path):
    location = StorageLocation(
        "AzureBlob",
        f"http://127.0.0.1:{listener.port}/devstoreaccount1/container/folder/",
        "devstoreaccount1",
        "a2V5LW5vdC1yZWFsLWZvci10ZXN0cw==",
        egress=RESTRICTED,
        field=OUT_FIELD,
    )
    source = tmp_path / "a.m4s"
    source.write_bytes(PAYLOAD)
    storage = open_storage(location)
    operations = (
        storage.list_files,
        lambda: storage.upload_file(source, "a.m4s"),
        lambda: storage.download_file("a.m4s", tmp_path / "back.m4s"),
    )
    for operation in operations:
        with pytest.raises(StorageError) as caught:
            operation()
        refused(caught.value, OUT_FIELD, "loopback")
    assert listener.seen() == 0
    storage.close()


def test_azure_allowed_with_an_admitting_network(azurite_server, tmp_path):
    target = azure_target(azurite_server, azurite_server.create_container())
    target.put("in.mp4", PAYLOAD)
    storage = open_storage(replace(target.location, egress=LOOPBACK_ALLOWED, field=OUT_FIELD))
    assert [f.name for f in storage.list_files()] == ["in.mp4"]
    storage.download_file("in.mp4", tmp_path / "in.mp4")
    assert (tmp_path / "in.mp4").read_bytes() == PAYLOAD
    storage.upload_file(tmp_path / "in.mp4", "out/copy.mp4")
    assert target.get("out/copy.mp4") == PAYLOAD
    storage.close()


# ------------------------------------------------------------------------------ Ftps


@pytest.mark.parametrize("scheme", ["ftp", "ftpes", "ftps"])
def test_ftp_to_a_loopback_listener_is_refused(listener, scheme, tmp_path):
    location = StorageLocation(
        "Ftps",
        f"{scheme}://127.1:{listener.port}/folder/",
        "vipe",
        "ftp-Secret-4711",
        egress=RESTRICTED,
        field=OUT_FIELD,
    )
    source = tmp_path / "a.m4s"
    source.write_bytes(PAYLOAD)
    storage = open_storage(location)
    for operation in (storage.list_files, lambda: storage.upload_file(source, "a.m4s")):
        with pytest.raises(StorageError) as caught:
            operation()
        refused(caught.value, OUT_FIELD, "loopback")
    assert listener.seen() == 0


def roundtrip(location: StorageLocation, target, tmp_path: Path) -> None:
    target.put("in.mp4", PAYLOAD)
    storage = open_storage(location)
    assert [f.name for f in storage.list_files()] == ["in.mp4"]
    storage.download_file("in.mp4", tmp_path / "in.mp4")
    assert (tmp_path / "in.mp4").read_bytes() == PAYLOAD
    storage.upload_file(tmp_path / "in.mp4", "out/copy.mp4")
    assert target.get("out/copy.mp4") == PAYLOAD
    storage.close()


def test_ftp_allowed_with_an_admitting_network(ftp_plain, tmp_path):
    target = ftp_target(ftp_plain)
    roundtrip(replace(target.location, egress=LOOPBACK_ALLOWED, field=OUT_FIELD), target, tmp_path)


def test_ftpes_by_name_keeps_the_certificate_check_on_the_name(
    ftp_explicit, tls_files, monkeypatch, tmp_path
):
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))
    target = ftp_target(ftp_explicit, host="localhost")
    policy = EgressPolicy.from_cidrs(["127.0.0.0/8", "::1/128"])
    roundtrip(replace(target.location, egress=policy, field=OUT_FIELD), target, tmp_path)


def test_ftp_passive_data_goes_to_the_control_host_not_the_reply_address(ftp_plain, tmp_path):
    """A PASV reply naming another address (here a private one nothing is allowed to reach)
    changes nothing: the data connection goes to the control connection's checked peer."""
    handler = ftp_plain._server.handler
    original = handler.masquerade_address
    handler.masquerade_address = "10.11.12.13"
    try:
        target = ftp_target(ftp_plain)
        policy = EgressPolicy.from_cidrs(["127.0.0.0/8"])
        roundtrip(replace(target.location, egress=policy, field=OUT_FIELD), target, tmp_path)
    finally:
        handler.masquerade_address = original
