"""A task's view of the fetcher (``InputFetcher.for_task``) against a real results folder, the
real S3 test endpoint and local http servers: a tenant reads its own results and nothing else of
the store, by any URL form, and a refusal never tells what exists."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import OutputFile
from gpu_consumers.input_scope import InputScope, clean_segments
from gpu_consumers.inputs import InputSettings
from gpu_consumers.storage import FileStore, S3Store
from tests.gpu_consumers.test_inputs import make_fetcher  # noqa: F401 (the fixture)
from tests.security.helpers import TENANT_A, TENANT_B, assert_generic_refusal, png, served_folder

PNG_A, PNG_B = png(color=(200, 0, 0)), png(color=(0, 0, 200))


def refused(view: Any, url: str, *secrets: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        view.fetch_bytes(url)
    assert_generic_refusal(str(caught.value), url, *secrets)


# ---------------------------------------------------------------------------- file://

@pytest.fixture
def file_results(results_dir: Path) -> tuple[Path, str, str]:
    """Tenant A's and tenant B's outputs in a real results folder: (root, A's URL, B's URL)."""
    store = FileStore(results_dir)
    url_a = store.put("task-a", 1, "output", OutputFile(PNG_A, "image/png", ".png"), tenant_id=TENANT_A)
    url_b = store.put("task-b", 1, "output", OutputFile(PNG_B, "image/png", ".png"), tenant_id=TENANT_B)
    return results_dir.resolve(), url_a, url_b


def test_a_tenant_reads_its_own_results(file_results: tuple[Path, str, str], results_url: str,
                                        make_fetcher: Any) -> None:
    root, url_a, url_b = file_results
    fetcher = make_fetcher(results_url=results_url)
    assert fetcher.for_task(TENANT_A).fetch_bytes(url_a) == PNG_A
    assert fetcher.for_task(TENANT_B).fetch_bytes(url_b) == PNG_B
    assert fetcher.for_task(TENANT_A).fetch_image(url_a).size == (64, 64)


def test_no_file_path_trick_reaches_another_tenants_result(
        file_results: tuple[Path, str, str], results_url: str, tmp_path: Path, make_fetcher: Any) -> None:
    root, url_a, _ = file_results
    inputs = tmp_path / "inputs"  # a configured input folder, holding a link into the results
    inputs.mkdir()
    (inputs / "link.png").symlink_to(root / TENANT_A / "task-a" / "1" / "output.png")
    (inputs / "folder").symlink_to(root / TENANT_A)
    # A root that contains the results folder opens nothing of it either.
    fetcher = make_fetcher(results_url=results_url, allowed_file_roots=[inputs, tmp_path])
    a_rel = "task-a/1/output.png"
    for url in [
        url_a,
        f"file://localhost{root}/{TENANT_A}/{a_rel}",
        f"file://{root}/{TENANT_B}/../{TENANT_A}/{a_rel}",
        f"file://{root}/{TENANT_B}/%2e%2e/{TENANT_A}/{a_rel}",
        f"file://{root}/{TENANT_B}/%2E%2E%2F{TENANT_A}/{a_rel}",
        f"file://{root}/{TENANT_B}/%252e%252e/{TENANT_A}/{a_rel}",
        f"file://{root}//{TENANT_A}//{a_rel}",
        f"file://{root}/./{TENANT_A}/./{a_rel}",
        f"file://{root}/{TENANT_A.upper()}/{a_rel}",
        f"file://{root}/{TENANT_A}./{a_rel}",
        f"file:///proc/self/root{root}/{TENANT_A}/{a_rel}",
        (inputs / "link.png").as_uri(),
        f"{(inputs / 'folder').as_uri()}/{a_rel}",
        f"file://{root}/{TENANT_A}/{a_rel}%00.png",
        f"file://{root}/{TENANT_A}", f"file://{root}", f"file://{root}/{TENANT_B}",
    ]:
        refused(fetcher.for_task(TENANT_B), url, str(root), str(len(PNG_A)))
    refused(fetcher.for_task(None), url_a, str(root))  # tasks without a tenant: not A's either
    # A predicted task id under the tenant's own folder is just a missing file: the same answer.
    refused(fetcher.for_task(TENANT_B), f"file://{root}/{TENANT_B}/task-a/1/output.png", str(root))


def test_file_inputs_are_off_unless_a_folder_is_configured(tmp_path: Path, results_url: str,
                                                          make_fetcher: Any) -> None:
    picture = tmp_path / "look.png"
    picture.write_bytes(PNG_A)
    refused(make_fetcher(results_url=results_url).for_task(TENANT_A), picture.as_uri(), str(tmp_path))
    configured = make_fetcher(results_url=results_url, allowed_file_roots=[tmp_path])
    assert configured.for_task(TENANT_A).fetch_bytes(picture.as_uri()) == PNG_A


# ---------------------------------------------------------------------------- s3://

@pytest.fixture
def s3_results(s3_config: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """Results in a real bucket under ``results/``: (bucket, A's URL, an object of another bucket)."""
    for name, value in s3_config.env().items():
        monkeypatch.setenv(name, value)  # the fetcher's own client reads the usual variables
    client = s3_config.client()
    bucket, catalog = f"results-{uuid.uuid4().hex[:10]}", f"catalog-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=catalog)
    client.put_object(Bucket=catalog, Key="looks/dress.png", Body=PNG_B)
    url_a = S3Store(bucket, "results", client).put(
        "task-a", 1, "output", OutputFile(PNG_A, "image/png", ".png"), tenant_id=TENANT_A)
    return bucket, url_a, f"s3://{catalog}/looks/dress.png"


def test_s3_inputs_only_from_the_own_results_and_configured_prefixes(
        s3_results: tuple[str, str, str], s3_config: Any, make_fetcher: Any) -> None:
    bucket, url_a, catalog_url = s3_results
    settings = {"results_url": f"s3://{bucket}/results", "s3_endpoint_url": s3_config.endpoint_url}
    closed = make_fetcher(**settings)
    assert closed.for_task(TENANT_A).fetch_bytes(url_a) == PNG_A
    refused(closed.for_task(TENANT_A), catalog_url)  # no prefix configured: no other bucket
    catalog = catalog_url.removeprefix("s3://").split("/")[0]
    opened = make_fetcher(**settings, allowed_s3_prefixes=[f"{catalog}/looks", bucket])
    assert opened.for_task(TENANT_B).fetch_bytes(catalog_url) == PNG_B
    refused(opened.for_task(TENANT_B), f"s3://{catalog}/other/dress.png")
    # The whole results bucket configured still opens only the tenant's own prefix of it.
    key = url_a.removeprefix(f"s3://{bucket}/")
    own_rel = key.removeprefix(f"results/{TENANT_A}/")
    for url in [
        url_a,
        f"s3://{bucket.upper()}/{key}",
        f"s3://{bucket}/results/{TENANT_B}/../{TENANT_A}/{own_rel}",
        f"s3://{bucket}/results/{TENANT_B}/%2e%2e/{TENANT_A}/{own_rel}",
        f"s3://{bucket}/results/{TENANT_B}/%252e%252e/{TENANT_A}/{own_rel}",
        f"s3://{bucket}//results/{TENANT_A}/{own_rel}",
        f"s3://{bucket}/results//{TENANT_A}/{own_rel}",
        f"s3://{bucket}/results/./{TENANT_A}/{own_rel}",
        f"s3://{bucket}/results/{TENANT_A}./{own_rel}",
        f"s3://{bucket}/./results/{TENANT_A}/{own_rel}",
        f"s3://{bucket}/results/{TENANT_B}/{own_rel}",  # a predicted id in the own prefix: missing
    ]:
        refused(opened.for_task(TENANT_B), url, "results/", str(len(PNG_A)))


def test_http_to_the_s3_endpoint_is_held_to_the_s3_rule(
        s3_results: tuple[str, str, str], s3_config: Any, make_fetcher: Any) -> None:
    bucket, url_a, _ = s3_results
    key = url_a.removeprefix(f"s3://{bucket}/")
    endpoint = s3_config.endpoint_url.rstrip("/")
    http_a = f"{endpoint}/{bucket}/{key}"
    settings = {"results_url": f"s3://{bucket}/results", "s3_endpoint_url": s3_config.endpoint_url}
    # The default: the endpoint is on loopback, a private address. B's URL is refused by the scope
    # first (the same answer as for anything else B may not read); A's by the address rule.
    default = make_fetcher(**settings)
    refused(default.for_task(TENANT_B), http_a, "results/")
    with pytest.raises(InvalidInput, match="private networks are not allowed"):
        default.for_task(TENANT_A).fetch_bytes(http_a)
    # The endpoint's network allowed and A's object public (the worker never signs an http
    # request): only the scope stands between B and A's object.
    s3_config.client().put_object_acl(Bucket=bucket, Key=key, ACL="public-read")
    opened = make_fetcher(**settings, allowed_networks=["127.0.0.1/32"])
    assert opened.for_task(TENANT_A).fetch_bytes(http_a) == PNG_A
    own_rel = key.removeprefix(f"results/{TENANT_A}/")
    for url in [
        http_a,
        f"{endpoint}/{bucket.upper()}/{key}",
        f"{endpoint}/{bucket}/results/{TENANT_B}/../{TENANT_A}/{own_rel}",
        f"{endpoint}/{bucket}/results/{TENANT_B}/%2e%2e/{TENANT_A}/{own_rel}",
        f"{endpoint}/{bucket}/results/{TENANT_B}/%252e%252e%252f{TENANT_A}/{own_rel}",
        f"{endpoint}/{bucket}/results/{TENANT_B}/..%2f{TENANT_A}/{own_rel}",
        f"{endpoint}//{bucket}/{key}",
        f"{endpoint}/{bucket}/results//{TENANT_A}/{own_rel}",
        f"{endpoint}/%62{bucket[1:]}/{key}",  # the bucket's first letter percent-encoded
        f"{endpoint}/{bucket}/{key}?versionId=null",
    ]:
        refused(opened.for_task(TENANT_B), url, "results/", str(len(PNG_A)))


@pytest.mark.parametrize("url, allowed", [
    ("http://s3.test:9000/results/r/tenant-b/t/1/output.png", True),
    ("http://s3.test:9000/results/r/tenant-a/t/1/output.png", False),
    ("http://results.s3.test:9000/r/tenant-a/t/1/output.png", False),  # virtual-host style
    ("http://RESULTS.S3.TEST.:9000/r/tenant-a/t/1/output.png", False),  # case, trailing dot
    ("http://results.s3.test:9000/r/tenant-b/t/1/output.png", True),
    ("http://s3.test:9000/results/r/tenant-b/%2E%2E/tenant-a/t/1/output.png", False),
    ("http://s3.test:9000/results/r/tenant-b/t/1/output.png.", False),
    ("http://s3.test:9000/results/r/tenant-b\\..\\tenant-a/t/1/output.png", False),
    ("http://s3.test:9000/", False), ("http://s3.test:9000/results", False),
    ("http://s3.test:9001/results/r/tenant-a/t/1/output.png", True),  # another server
    ("http://images.example/r/tenant-a/t/1/output.png", True),
])
def test_s3_endpoint_urls_are_read_path_style_and_virtual_host_style(url: str, allowed: bool) -> None:
    settings = InputSettings(results_url="s3://results/r", s3_endpoint_url="http://s3.test:9000")
    assert InputScope(settings, TENANT_B).http_allowed(httpx.URL(url)) is allowed


@pytest.mark.parametrize("url, allowed", [
    ("https://results.s3.amazonaws.com/tenant-a/t/1/o.png", False),
    ("https://results.s3.eu-west-1.amazonaws.com/tenant-a/t/1/o.png", False),
    ("https://s3.eu-west-1.amazonaws.com/results/tenant-a/t/1/o.png", False),
    ("https://s3-eu-west-1.amazonaws.com/results/tenant-a/t/1/o.png", False),
    ("https://results.s3.dualstack.eu-west-1.amazonaws.com/tenant-a/t/1/o.png", False),
    ("https://results.s3.amazonaws.com/tenant-b/t/1/o.png", True),
    ("https://ec2.amazonaws.com/results/tenant-a/t/1/o.png", True),  # no S3 host
])
def test_aws_s3_host_names_are_read_every_way_they_could_be(url: str, allowed: bool) -> None:
    settings = InputSettings(results_url="s3://results", allowed_s3_prefixes=[])
    assert InputScope(settings, TENANT_B).http_allowed(httpx.URL(url)) is allowed


def test_results_served_over_http_are_read_only_under_the_own_prefix(
        file_results: tuple[Path, str, str], results_url: str, make_fetcher: Any) -> None:
    root, _, _ = file_results
    with served_folder(root) as base:
        fetcher = make_fetcher(results_url=results_url, results_http_url=f"{base}/",
                               allowed_networks=["127.0.0.1/32"])
        assert fetcher.for_task(TENANT_A).fetch_bytes(f"{base}/{TENANT_A}/task-a/1/output.png") == PNG_A
        for url in [
            f"{base}/{TENANT_A}/task-a/1/output.png",
            f"{base}/{TENANT_B}/../{TENANT_A}/task-a/1/output.png",
            f"{base}/{TENANT_B}/%2e%2e/{TENANT_A}/task-a/1/output.png",
            f"{base}/{TENANT_B}/..%2f{TENANT_A}/task-a/1/output.png",
            f"{base}/{TENANT_B}/%252e%252e%252f{TENANT_A}/task-a/1/output.png",
            f"{base}//{TENANT_A}/task-a/1/output.png",
            f"{base}/{TENANT_A}/", f"{base}/",
            f"http://127.0.0.1.:{base.rsplit(':', 1)[1]}/{TENANT_A}/task-a/1/output.png",
        ]:
            refused(fetcher.for_task(TENANT_B), url, str(root), str(len(PNG_A)))


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.server.target)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_redirect_into_another_tenants_results_is_refused(
        file_results: tuple[Path, str, str], results_url: str, make_fetcher: Any) -> None:
    root, _, _ = file_results
    with served_folder(root) as base:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
        server.target = f"{base}/{TENANT_A}/task-a/1/output.png"  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            fetcher = make_fetcher(results_url=results_url, results_http_url=base,
                                   allowed_networks=["127.0.0.1/32"])
            with pytest.raises(InvalidInput) as caught:
                fetcher.for_task(TENANT_B).fetch_bytes(f"http://127.0.0.1:{server.server_address[1]}/x.png")
            assert_generic_refusal(str(caught.value), server.target, str(root))  # type: ignore[attr-defined]
            assert fetcher.for_task(TENANT_A).fetch_bytes(
                f"http://127.0.0.1:{server.server_address[1]}/x.png") == PNG_A
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("path, segments", [
    ("a/b", ["a", "b"]), ("a%20b/c", ["a b", "c"]), ("a/%2e%2e/b", None), ("a/%252e%252e/b", None),
    ("a//b", None), ("a/./b", None), ("a./b", None), ("a /b", None), ("a\\b", None), ("a/b%00", None),
    ("a%2fb", ["a", "b"]), ("%" + "25" * 6 + "41", ["A"]), ("%" + "25" * 9 + "41", None),
    ("a/%ff", None),
])
def test_clean_segments_decode_fully_and_refuse_every_ambiguous_segment(path: str, segments: Any) -> None:
    assert clean_segments(path) == segments
