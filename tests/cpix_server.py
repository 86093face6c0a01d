"""A CPIX key server for the tests, on 127.0.0.1 (threaded `http.server`, optional TLS).

It answers a CPIX 2.3 request in the SPEKE v2 style: it checks HTTP Basic credentials, fills
every requested key with a key derived from (contentId, key id) (`CpixServer.key_for`, so
tests can assert), an explicit IV, and for each requested DRM system its own PSSH, DASH
ContentProtectionData and HLS signalling (marked as the server's, so tests can tell them
from vipe's). `mode` makes it misbehave: `unauthorized` (401), `fail` (500 for `failures`
requests, then OK), `slow` (answers after `delay` s), `malformed` (broken XML), `missing_key`
(leaves the last requested key out), `short_key` (8-byte keys), `speke_v1` (a SPEKE v1 /
CPIX 2.0 shaped answer), `doctype` (a DOCTYPE with an entity), `redirect` (307 elsewhere).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import ssl
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CPIX = "urn:dashif:org:cpix"
PSKC = "urn:ietf:params:xml:ns:keyprov:pskc"
SPEKE = "urn:aws:amazon:com:speke"
WIDEVINE = uuid.UUID("edef8ba9-79d6-4ace-a3c8-27dcd51d21ed")
PLAYREADY = uuid.UUID("9a04f079-9840-4286-ab92-e65be0885f95")
FAIRPLAY = uuid.UUID("94ce86fb-07ff-4f43-adb8-93d2fa968ca2")


def server_pssh(system_id: uuid.UUID, kid: uuid.UUID) -> bytes:
    """The server's own pssh box for a key: version 0, data names the server and the key."""
    data = b"cpix-test-server:" + str(kid).encode()
    payload = struct.pack(">I", 0) + system_id.bytes + struct.pack(">I", len(data)) + data
    return struct.pack(">I4s", 8 + len(payload), b"pssh") + payload


def fairplay_uri(kid: uuid.UUID) -> str:
    return f"skd://cpix-test-server/{kid.hex}"


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _q(tag: str, ns: str = CPIX) -> str:
    return f"{{{ns}}}{tag}"


class CpixServer:
    """Start with `with CpixServer(...) as server:`; `server.url` is the CPIX endpoint."""

    def __init__(
        self,
        tenant: str = "tenant-1",
        management_key: str = "management-secret-1",
        *,
        certificate: tuple[Path, Path] | None = None,
    ):
        self.tenant = tenant
        self.management_key = management_key
        self.certificate = certificate
        self.mode = "ok"
        self.failures = 0
        self.delay = 0.0
        self.requests: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- deterministic key material ---------------------------------------------------------

    @staticmethod
    def key_for(content_id: str, kid: uuid.UUID) -> bytes:
        return hashlib.sha256(f"key:{content_id}:{kid}".encode()).digest()[:16]

    @staticmethod
    def iv_for(kid: uuid.UUID) -> bytes:
        return hashlib.sha256(f"iv:{kid}".encode()).digest()[:16]

    # -- life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.certificate else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}/cpix/v2"

    def __enter__(self) -> CpixServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if self.certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # -- answering --------------------------------------------------------------------------

    def answer(self, body: bytes, authorization: str | None) -> tuple[int, bytes]:
        """(HTTP status, body) for one request."""
        expected = "Basic " + _b64(f"{self.tenant}:{self.management_key}")
        if self.mode == "unauthorized" or authorization != expected:
            return 401, b"<error>unauthorized</error>"
        with self._lock:
            if self.mode == "fail" and self.failures > 0:
                self.failures -= 1
                return 500, b"<error>try again</error>"
        if self.mode == "slow":
            time.sleep(self.delay)
        if self.mode == "malformed":
            return 200, b'<?xml version="1.0"?><cpix:CPIX xmlns:cpix="urn:dashif:org:cpix"><oops'
        if self.mode == "doctype":
            return 200, (
                b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                b'<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix">&e;</cpix:CPIX>'
            )
        request = ET.fromstring(body)
        if self.mode == "speke_v1":
            return 200, self._speke_v1(request)
        return 200, self._cpix_23(request)

    def _requested(self, request: ET.Element) -> tuple[str, list[ET.Element]]:
        content_id = request.get("contentId") or request.get("id") or ""
        keys = request.findall(f"{_q('ContentKeyList')}/{_q('ContentKey')}")
        if self.mode == "missing_key":
            keys = keys[:-1]
        return content_id, keys

    def _key_bytes(self, content_id: str, kid: uuid.UUID) -> bytes:
        key = self.key_for(content_id, kid)
        return key[:8] if self.mode == "short_key" else key

    def _fill_key(self, element: ET.Element, content_id: str) -> None:
        kid = uuid.UUID(element.get("kid"))
        element.set("explicitIV", _b64(self.iv_for(kid)))
        data = ET.SubElement(element, _q("Data"))
        secret = ET.SubElement(data, _q("Secret", PSKC))
        ET.SubElement(secret, _q("PlainValue", PSKC)).text = _b64(self._key_bytes(content_id, kid))

    def _cpix_23(self, request: ET.Element) -> bytes:
        content_id, keys = self._requested(request)
        root = ET.Element(_q("CPIX"), {"contentId": content_id, "version": "2.3"})
        key_list = ET.SubElement(root, _q("ContentKeyList"))
        for requested in keys:
            element = ET.SubElement(key_list, _q("ContentKey"), dict(requested.attrib))
            self._fill_key(element, content_id)
        drm_list = ET.SubElement(root, _q("DRMSystemList"))
        for requested in request.iterfind(f"{_q('DRMSystemList')}/{_q('DRMSystem')}"):
            kid, system = uuid.UUID(requested.get("kid")), uuid.UUID(requested.get("systemId"))
            element = ET.SubElement(drm_list, _q("DRMSystem"), dict(requested.attrib))
            box = server_pssh(system, kid)
            for child in requested:
                if child.tag == _q("PSSH"):
                    ET.SubElement(element, _q("PSSH")).text = _b64(box)
                elif child.tag == _q("ContentProtectionData"):
                    fragment = f"<cenc:pssh>{_b64(box)}</cenc:pssh>"
                    if system == PLAYREADY:
                        fragment += "<mspr:pro>c2VydmVyLXBybw==</mspr:pro>"
                    ET.SubElement(element, _q("ContentProtectionData")).text = _b64(fragment)
                elif child.tag == _q("HLSSignalingData"):
                    playlist = child.get("playlist", "media")
                    tag = "#EXT-X-SESSION-KEY" if playlist == "master" else "#EXT-X-KEY"
                    if system == FAIRPLAY:
                        line = (
                            f'{tag}:METHOD=SAMPLE-AES,URI="{fairplay_uri(kid)}",'
                            'KEYFORMAT="com.apple.streamingkeydelivery",KEYFORMATVERSIONS="1"'
                        )
                    else:
                        line = (
                            f'{tag}:METHOD=SAMPLE-AES,URI="data:text/plain;base64,{_b64(box)}",'
                            f'KEYFORMAT="urn:uuid:{system}",KEYFORMATVERSIONS="1"'
                        )
                    ET.SubElement(
                        element, _q("HLSSignalingData"), {"playlist": playlist}
                    ).text = _b64(line)
        rules = request.find(_q("ContentKeyUsageRuleList"))
        if rules is not None:
            root.append(rules)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def _speke_v1(self, request: ET.Element) -> bytes:
        """The SPEKE v1 shape: CPIX 2.0 with `id`, PSSH/ContentProtectionData, FairPlay as
        `URIExtXKey` plus `speke:KeyFormat`/`KeyFormatVersions`."""
        content_id, keys = self._requested(request)
        ET.register_namespace("speke", SPEKE)
        root = ET.Element(_q("CPIX"), {"id": content_id})
        key_list = ET.SubElement(root, _q("ContentKeyList"))
        for requested in keys:
            element = ET.SubElement(key_list, _q("ContentKey"), {"kid": requested.get("kid")})
            self._fill_key(element, content_id)
        drm_list = ET.SubElement(root, _q("DRMSystemList"))
        for requested in request.iterfind(f"{_q('DRMSystemList')}/{_q('DRMSystem')}"):
            kid, system = uuid.UUID(requested.get("kid")), uuid.UUID(requested.get("systemId"))
            element = ET.SubElement(
                drm_list, _q("DRMSystem"), {"kid": str(kid), "systemId": str(system)}
            )
            if system == FAIRPLAY:
                ET.SubElement(element, _q("URIExtXKey")).text = _b64(fairplay_uri(kid))
                ET.SubElement(element, _q("KeyFormat", SPEKE)).text = _b64(
                    "com.apple.streamingkeydelivery"
                )
                ET.SubElement(element, _q("KeyFormatVersions", SPEKE)).text = _b64("1")
            else:
                box = server_pssh(system, kid)
                ET.SubElement(element, _q("PSSH")).text = _b64(box)
                ET.SubElement(element, _q("ContentProtectionData")).text = _b64(
                    f"<cenc:pssh>{_b64(box)}</cenc:pssh>"
                )
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _handler(server: CpixServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            server.requests.append(body)
            server.headers.append(dict(self.headers.items()))
            status, answer = server.answer(body, self.headers.get("Authorization"))
            try:
                if server.mode == "redirect" and status == 200:
                    self.send_response(307)
                    self.send_header("Location", server.url + "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem): it is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpix-test-server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
