"""InputFetcher against real endpoints: a local HTTP(S) server, the test S3 endpoint, local files."""

from __future__ import annotations

import datetime
import io
import ipaddress
import socket
import ssl
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image, ImageFile

from gpu_consumers.errors import InvalidInput
from gpu_consumers.inputs import InputFetcher, InputSettings, decode_image, redact
from schemas.address_policy import forbidden_reason


def _png(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


PNG = _png()
BOMB = _png_header_only(20_000, 20_000)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = threading.Event()  # set at teardown: lets the "slow" handlers end
        self.endless_done = threading.Event()
        self.seen: list[tuple[str, str | None]] = []  # (path, Host header)
        self.sni: list[str | None] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "image/png", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        parts = urlsplit(self.path)
        if parts.path == "/image.png":
            self._send(200, PNG)
        elif parts.path == "/bomb.png":
            self._send(200, BOMB)
        elif parts.path == "/text":
            self._send(200, b"<html>not an image</html>", "text/html")
        elif parts.path == "/missing":
            self._send(404, b"no", "text/plain")
        elif parts.path == "/redirect":
            self._send(302, Location=parse_qs(parts.query)["to"][0])
        elif parts.path == "/loop":
            self._send(302, Location="/loop")
        elif parts.path == "/endless":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 16384)
            except OSError:
                pass
            finally:
                self.server.endless_done.set()
        elif parts.path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.server.release.wait(30)
        elif parts.path == "/slow":  # headers and 10 of 100 bytes, then nothing
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.server.release.wait(30)


def _serve(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def server() -> Iterator[_Server]:
    yield from _serve(_Server())


@pytest.fixture
def make_fetcher() -> Iterator[Any]:
    """Builds InputFetchers (closed at teardown); test-friendly timeouts unless given."""
    made: list[InputFetcher] = []

    def make(**settings: Any) -> InputFetcher:
        made.append(InputFetcher(InputSettings(**{"timeout_s": 5, "deadline_s": 20, **settings})))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.close()


@pytest.fixture
def fetcher(make_fetcher: Any) -> InputFetcher:
    """Allowed to reach the local test server."""
    return make_fetcher(allow_private_networks=True)


# ---------------------------------------------------------------------------- http(s)

def test_fetch_http_image(server: _Server, fetcher: InputFetcher) -> None:
    url = f"http://127.0.0.1:{server.port}/image.png"
    image = fetcher.fetch_image(url)
    assert image.size == (8, 6) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (200, 30, 40)
    assert fetcher.fetch_image(url, mode="L").mode == "L"
    assert fetcher.fetch_bytes(url) == PNG


def test_resolves_once_and_connects_to_the_checked_address_with_the_original_host(
        server: _Server, make_fetcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No second lookup that a rebinding DNS server could answer differently; the server still
    sees the name in the Host header."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "images.example":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        if len(lookups) == 1:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.9", port))]  # rebound

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    fetcher = make_fetcher(allowed_networks="127.0.0.1/32")  # the test server, and nothing else private
    assert fetcher.fetch_bytes(f"http://images.example:{server.port}/image.png") == PNG
    assert lookups == ["images.example"]
    assert server.seen == [("/image.png", f"images.example:{server.port}")]


def test_redirects_are_followed_and_each_target_is_checked(server: _Server, make_fetcher: Any) -> None:
    base = f"http://127.0.0.1:{server.port}"
    fetcher = make_fetcher(allowed_networks=["127.0.0.1/32"])
    assert fetcher.fetch_bytes(f"{base}/redirect?to=/image.png") == PNG
    for target, reason in (("http://169.254.169.254/latest/meta-data/", "link-local"),
                           (f"http://[::1]:{server.port}/image.png", "loopback"),
                           ("http://10.0.0.1/x", "private"),
                           ("file:///etc/passwd", "redirect to file:///etc/passwd refused"),
                           ("http://[::1", "transfer failed .*Invalid URL in location")):
        with pytest.raises(InvalidInput, match=reason):
            fetcher.fetch_bytes(f"{base}/redirect?to={target}")
    with pytest.raises(InvalidInput, match="more than 5 redirects"):
        fetcher.fetch_bytes(f"{base}/loop")
    assert [path for path, _ in server.seen].count("/loop") == 6


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/image.png",
    "http://10.0.0.1/image.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/image.png",
    "http://[::ffff:127.0.0.1]:{port}/image.png",
    "http://localhost:{port}/image.png",
    "http://2130706433:{port}/image.png",  # 127.0.0.1 as one number
    "http://0.0.0.0:{port}/image.png",
    "http://224.0.0.1/image.png",
    "http://100.64.0.1/image.png",
    "http://[fe80::1]/image.png",
    "http://[fc00::1]/image.png",
    "http://[2002:7f00:1::]/image.png",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::a00:1]/image.png",  # NAT64 of 10.0.0.1
])
def test_private_addresses_are_refused_before_any_connection(
        url: str, server: _Server, make_fetcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[Any] = []
    real_connect = socket.socket.connect

    def spy(sock: socket.socket, address: Any) -> Any:
        connects.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    fetcher = make_fetcher()  # the default: allow_private_networks=False
    with pytest.raises(InvalidInput, match="refused.*private networks are not allowed"):
        fetcher.fetch_image(url.format(port=server.port))
    assert connects == [] and server.seen == []


def test_forbidden_reason_lets_public_addresses_through() -> None:
    for public in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert forbidden_reason(ipaddress.ip_address(public)) is None
    assert forbidden_reason(ipaddress.ip_address("::ffff:192.168.1.1")) == "private address ::ffff:c0a8:101"


def test_too_large_stream_stops_early(server: _Server, make_fetcher: Any) -> None:
    """/endless never ends: returning at all proves the fetcher stopped reading."""
    fetcher = make_fetcher(allow_private_networks=True, max_bytes=100_000)
    with pytest.raises(InvalidInput, match="too large, over the 100000-byte limit.*stopped reading"):
        fetcher.fetch_bytes(f"http://127.0.0.1:{server.port}/endless")
    assert server.endless_done.wait(10), "the server kept writing: the connection was not closed"


def test_declared_length_over_the_limit_is_refused_before_reading(server: _Server, make_fetcher: Any) -> None:
    fetcher = make_fetcher(allow_private_networks=True, max_bytes=1000)
    with pytest.raises(InvalidInput, match="1000000000000 bytes declared"):
        fetcher.fetch_bytes(f"http://127.0.0.1:{server.port}/declared-huge")


def test_slow_server_times_out(server: _Server, make_fetcher: Any) -> None:
    fetcher = make_fetcher(allow_private_networks=True, timeout_s=0.3)
    with pytest.raises(InvalidInput, match="/slow: timed out"):
        fetcher.fetch_bytes(f"http://127.0.0.1:{server.port}/slow")


def test_total_deadline_ends_a_fast_but_endless_download(server: _Server, make_fetcher: Any) -> None:
    fetcher = make_fetcher(allow_private_networks=True, max_bytes=10**12, deadline_s=0.3)
    with pytest.raises(InvalidInput, match=r"timed out, over 0.3s \(INPUT_DEADLINE_S\)"):
        fetcher.fetch_bytes(f"http://127.0.0.1:{server.port}/endless")


def test_unreachable_host(fetcher: InputFetcher) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"127.0.0.1:{port}/x.png: unreachable"):
            fetcher.fetch_bytes(f"http://127.0.0.1:{port}/x.png")
    with pytest.raises(InvalidInput, match="cannot resolve no-such-host.invalid"):
        fetcher.fetch_bytes("http://no-such-host.invalid/x.png")


def test_http_error_status(server: _Server, fetcher: InputFetcher) -> None:
    with pytest.raises(InvalidInput, match="answered HTTP 404"):
        fetcher.fetch_bytes(f"http://127.0.0.1:{server.port}/missing")


def test_non_image_bytes(server: _Server, fetcher: InputFetcher) -> None:
    with pytest.raises(InvalidInput, match="/text: not an image"):
        fetcher.fetch_image(f"http://127.0.0.1:{server.port}/text")


def test_image_over_max_pixels_is_refused_before_decoding(
        server: _Server, fetcher: InputFetcher, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Any] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: loads.append(image) or real_load(image))
    with pytest.raises(InvalidInput, match="bomb.png: .*40000000.*INPUT_MAX_IMAGE_PIXELS"):
        fetcher.fetch_image(f"http://127.0.0.1:{server.port}/bomb.png")
    assert loads == []
    # Under Pillow's own default (89 MP) but over ours: the per-call limit applies, and is restored.
    default = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidInput, match="INPUT_MAX_IMAGE_PIXELS.*49000000"):
        decode_image(_png_header_only(7000, 7000), "x.png", max_pixels=40_000_000)
    assert loads == [] and default == Image.MAX_IMAGE_PIXELS


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 'localhost' signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    ca, cert, key = _tls_files(tmp_path)
    server = _Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)  # type: ignore[assignment]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for running in _serve(server):
        yield running, ca


def test_https_sends_sni_and_verifies_the_certificate_against_the_name(
        tls_server: tuple[_Server, Path], make_fetcher: Any) -> None:
    server, ca = tls_server
    fetcher = make_fetcher(allow_private_networks=True, ca_bundle=ca)
    assert fetcher.fetch_bytes(f"https://localhost:{server.port}/image.png") == PNG
    assert server.sni == ["localhost"] and server.seen == [("/image.png", f"localhost:{server.port}")]
    # The certificate names 'localhost', not 127.0.0.1; and without our CA it is not trusted.
    with pytest.raises(InvalidInput, match="unreachable.*(CERTIFICATE_VERIFY_FAILED|IP address mismatch)"):
        fetcher.fetch_bytes(f"https://127.0.0.1:{server.port}/image.png")
    with pytest.raises(InvalidInput, match="unreachable.*CERTIFICATE_VERIFY_FAILED"):
        make_fetcher(allow_private_networks=True).fetch_bytes(f"https://localhost:{server.port}/image.png")


# ---------------------------------------------------------------------------- messages, schemes

def test_messages_leave_credentials_and_query_out(make_fetcher: Any) -> None:
    url = "http://alice:hunter2@10.0.0.1/a.png?X-Amz-Signature=topsecret"
    assert redact(url) == "http://10.0.0.1/a.png?…"
    with pytest.raises(InvalidInput) as caught:
        make_fetcher().fetch_bytes(url)
    assert "hunter2" not in str(caught.value) and "topsecret" not in str(caught.value)
    assert str(caught.value).startswith("http://10.0.0.1/a.png?…: refused")


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://x/", "data:image/png;base64,AA==",
                                 "/etc/passwd", "C:\\x.png"])
def test_unsupported_schemes(url: str, make_fetcher: Any) -> None:
    with pytest.raises(InvalidInput, match="unsupported URL scheme"):
        make_fetcher().fetch_bytes(url)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INPUT_MAX_BYTES", "1234")
    monkeypatch.setenv("INPUT_ALLOWED_FILE_ROOTS", f"{tmp_path}/a,{tmp_path}/b")
    monkeypatch.setenv("INPUT_ALLOWED_NETWORKS", '["10.1.0.0/16", "fd00::/8"]')
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("RESULTS_URL", f"file://{tmp_path}/results")
    monkeypatch.setenv("INPUT_ALLOWED_S3_PREFIXES", "s3://Refs/catalog/, shared")
    monkeypatch.setenv("INPUT_RESULTS_HTTP_URL", "https://cdn.example/results")
    settings = InputSettings()
    assert settings.max_bytes == 1234 and settings.s3_endpoint_url == "http://minio:9000"
    assert settings.allowed_file_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.allowed_s3_prefixes == [("refs", "catalog"), ("shared", "")]
    assert settings.results_url == f"file://{tmp_path}/results"
    assert settings.results_http_url == "https://cdn.example/results"
    assert [str(n) for n in settings.allowed_networks] == ["10.1.0.0/16", "fd00::/8"]
    assert not settings.allow_private_networks and settings.max_image_pixels == 40_000_000
    for name in ("INPUT_ALLOWED_FILE_ROOTS", "INPUT_ALLOWED_S3_PREFIXES"):
        monkeypatch.delenv(name)
    defaults = InputSettings()  # file:// and s3:// inputs: none unless configured
    assert defaults.allowed_file_roots == [] and defaults.allowed_s3_prefixes == []


# ---------------------------------------------------------------------------- file://

def test_file_urls_only_below_the_allowed_roots(tmp_path: Path, make_fetcher: Any) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "in.png").write_bytes(PNG)
    (outside / "out.png").write_bytes(PNG)
    (allowed / "link.png").symlink_to(outside / "out.png")
    fetcher = make_fetcher(allowed_file_roots=[allowed], max_bytes=len(PNG))
    assert fetcher.fetch_image((allowed / "in.png").as_uri()).size == (8, 6)
    assert fetcher.fetch_bytes(f"file://localhost{allowed}/in.png") == PNG
    # Outside, missing, a folder, a NUL byte: one message, which tells none of them apart.
    for url in ((outside / "out.png").as_uri(), (allowed / "link.png").as_uri(),
                f"file://{allowed}/../outside/out.png", "file:///etc/hostname",
                (allowed / "nope.png").as_uri(), allowed.as_uri(), f"file://{allowed}/in%00.png"):
        with pytest.raises(InvalidInput) as caught:
            fetcher.fetch_bytes(url)
        shown = redact(url, last_segment_only=True)
        assert str(caught.value) == f"input {shown} is not readable for this task"
        assert str(allowed) not in str(caught.value) and str(tmp_path) not in str(caught.value)
    with pytest.raises(InvalidInput, match="must name a local path"):
        fetcher.fetch_bytes(f"file://fileserver{allowed}/in.png")
    (allowed / "big.bin").write_bytes(b"x" * (len(PNG) + 1))
    with pytest.raises(InvalidInput, match="too large"):
        fetcher.fetch_bytes((allowed / "big.bin").as_uri())


# ---------------------------------------------------------------------------- s3://

def test_fetch_from_s3(s3_config: Any, make_fetcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_config.env().items():
        monkeypatch.setenv(name, value)  # the fetcher's own client reads the usual variables
    client = s3_config.client()
    bucket = f"inputs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="refs/a shirt.png", Body=PNG, ContentType="image/png")
    client.put_object(Bucket=bucket, Key="refs/notes.txt", Body=b"hello")
    fetcher = make_fetcher(s3_endpoint_url=s3_config.endpoint_url, max_bytes=len(PNG))
    image = fetcher.fetch_image(f"s3://{bucket}/refs/a shirt.png")
    assert image.size == (8, 6) and image.getpixel((1, 1)) == (200, 30, 40)
    with pytest.raises(InvalidInput, match="notes.txt: not an image"):
        fetcher.fetch_image(f"s3://{bucket}/refs/notes.txt")
    for missing in (f"s3://{bucket}/refs/missing.png", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/a.png"):
        with pytest.raises(InvalidInput, match="is not readable for this task$"):
            fetcher.fetch_bytes(missing)  # which of key or bucket is missing: not said
    with pytest.raises(InvalidInput, match="needs a bucket and a key"):
        fetcher.fetch_bytes(f"s3://{bucket}")
    small = make_fetcher(s3_endpoint_url=s3_config.endpoint_url, max_bytes=10)
    with pytest.raises(InvalidInput, match="too large"):
        small.fetch_bytes(f"s3://{bucket}/refs/a shirt.png")
