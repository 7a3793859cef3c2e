"""Serve stage: a run folder or exported model over HTTP (FastAPI + uvicorn), with micro-batching and a page.

Entry function: :func:`serve`. The app itself is :func:`textlora.serve.app.create_app`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from textlora.errors import ConfigError, TextloraError


class ServeError(TextloraError):
    """The server cannot start as asked (extra not installed, port taken)."""


@dataclass(frozen=True)
class ServeLimits:
    """Request limits and micro-batching settings of one server."""

    max_texts: int = 64
    """Texts per request; more is refused with 413."""
    max_chars: int = 2000
    """Characters per text; a longer text is refused with 413 (the model reads max_length tokens anyway)."""
    max_batch: int = 32
    """Most texts in one model call, gathered from concurrent requests."""
    max_wait_ms: float = 5.0
    """How long a request may wait for others to share its model call."""
    max_queue: int = 4096
    """Texts waiting for the model; beyond it requests get 503 (retry later)."""

    def __post_init__(self):
        for name in ("max_texts", "max_chars", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"--max-wait-ms must be between 0 and 1000, got {self.max_wait_ms}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: enough for ``max_texts`` texts of ``max_chars`` characters each in any
        JSON encoding. A character is at most 12 bytes of JSON (one outside the BMP, such as an emoji, escaped as
        a surrogate pair ``\\ud83d\\ude00``, as Python's ``json.dumps`` writes it); 64 bytes per text allow for
        quotes, commas and indentation, and 4 KiB for the rest of the document."""
        return self.max_texts * (self.max_chars * 12 + 64) + 4096


def _check_port(host: str, port: int) -> None:
    """Fail with a clear message now rather than a uvicorn traceback once the model has loaded."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port; give one from 1 to 65535 (default 8000)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:  # the host, not the port
                raise ServeError(f"cannot listen on --host {host} ({exc.strerror}); give an address of this "
                                 "machine, such as 127.0.0.1 or 0.0.0.0") from None
            raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or stop "
                             "what is using it") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(path: Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          limits: Optional[ServeLimits] = None, root_path: str = "", log_level: str = "info",
          onnx: bool = False, precision: str = "run", base_model: Optional[str] = None,
          max_length: Optional[int] = None) -> None:
    """Load ``path`` (run folder or exported folder) and serve it until interrupted.

    Args:
        path: a run folder from ``textlora train`` or a model folder from ``textlora export``.
        host: address to bind; the loopback default keeps the server private to this machine.
        port: TCP port.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        limits: request limits and micro-batching settings (default :class:`ServeLimits`).
        root_path: the URL prefix a reverse proxy serves this under (e.g. ``/textlora``), for the docs.
        log_level: uvicorn's log level.
        onnx: serve an exported folder's ``model.onnx`` on ONNX Runtime (CPU), see BENCHMARKS.md.
        precision: ``run`` (the run's ``train.mixed_precision`` on this device, also for an exported folder),
            ``fp32`` or ``bf16``.
        base_model: for a run folder, another copy of its base model, a folder or hub id (``--base-model``).
        max_length: read texts up to this many tokens instead of the model's own (``--max-length``).
    """
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ServeError(f"`textlora serve` needs the serve extra ({exc.name} is missing): "
                         "pip install 'textlora[serve]'") from None
    from .classifier import load_classifier

    _check_port(host, port)
    limits = limits or ServeLimits()
    classifier = load_classifier(Path(path), device, batch_size=limits.max_batch, onnx=onnx, precision=precision,
                                 base_model=base_model, max_length=max_length)
    classifier.predict(["warm-up"])  # the first call is slow (allocations, kernels): not a user's request
    app = create_app(classifier, limits)
    if not _is_loopback(host):
        print(f"[serve] listening on {host}, reachable from other machines; the API has no authentication: "
              "put it behind a reverse proxy that adds it (README: Serving)")
    print(f"[serve] {classifier.info.get('base_model')} ({', '.join(classifier.labels)}) on "
          f"http://{host}:{port}/  (API: POST /v1/classify, docs: /docs)", flush=True)
    # proxy_headers: X-Forwarded-For/-Proto are trusted from the proxy's addresses only
    # (uvicorn's FORWARDED_ALLOW_IPS, 127.0.0.1 by default).
    uvicorn.run(app, host=host, port=port, log_level=log_level, root_path=root_path, proxy_headers=True,
                timeout_graceful_shutdown=5)

