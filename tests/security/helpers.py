"""What the hostile-input tests share: two tenants, images, a folder served over http, and the
check that a refusal says nothing beyond "not readable"."""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from gpu_consumers.inputs import redact
from producers.submit import Origin, TaskProducer
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
# Words of the messages a refusal used to give: each tells whether something exists, or where.
LEAKY_WORDS = ("no such", "exist", "found", "outside", "allowed", "INPUT_", "NoSuch", "AccessDenied",
               "bytes", "regular file", "Forbidden", "404", "403")


def png(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (180, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_generic_refusal(message: str, url: str, *secrets: str) -> None:
    """``message`` is exactly the one refusal text, naming ``url`` without its folders, and holds
    none of ``secrets`` (the results root, the other tenant's id and key, an object's size...)."""
    assert message == f"input {redact(url, last_segment_only=True)} is not readable for this task", message
    # Looked for outside the URL's host and port, which the task gave itself: a test server's
    # random port (51403) once spelled "403".
    shown = message.replace(urlsplit(url).netloc, "")  # an empty netloc replaces nothing
    for secret in secrets:
        assert secret not in shown, (secret, message)
    for word in LEAKY_WORDS:
        assert word not in shown, (word, message)


def submit_as(kafka: KafkaSettings, tenant: str | None, task_type: TaskType, params: dict[str, Any],
              *, idempotency_key: str | None = None, secret: bytes | None = None) -> str:
    """Submit as the API does for a key of ``tenant``: the envelope's origin_tenant_id."""
    with TaskProducer(kafka, source="security-test", origin=Origin(tenant_id=tenant),
                      idempotency_secret=secret) as producer:
        return producer.submit(task_type, params, idempotency_key=idempotency_key)


@contextmanager
def served_folder(root: Path) -> Iterator[str]:
    """``root`` served over http on 127.0.0.1 (what a CDN in front of the results does); yields
    the base URL."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass
