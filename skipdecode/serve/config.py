"""What a server is: one dataclass, built by `skipdecode serve` and by the Ray deployment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeConfig:
    export: str
    """Export folder (onnxruntime) or engine folder (tensorrt)."""
    backend: str = "onnxruntime"
    """'onnxruntime' or 'tensorrt'."""
    device: str = "cpu"
    """cpu or cuda (onnxruntime); tensorrt always runs on cuda."""
    threads: int | None = None
    """ONNX Runtime intra-op threads (None: all cores)."""
    max_batch: int = 8
    """KV rows: the most requests decoding at once."""
    max_queue: int = 256
    """Requests waiting for a row beyond which new ones get 429: memory stays bounded."""
    api_key: str | None = None
    """When set, every /v1 request needs ``Authorization: Bearer KEY`` (else 401)."""
    speedup: float | None = None
    """The default schedule, solved for this speedup; None: the export's own schedule."""
    model_name: str | None = None
    """The id /v1/models lists and requests name; default: the export folder's name."""
    max_body_bytes: int = 1 << 20
    """Larger request bodies get 413 before they are parsed."""
    max_choices: int = 16
    """Prompts x n of one request (each is an engine request)."""
    shutdown_timeout_s: float = 30.0
    """On SIGTERM, streams still running after this long end with an error event."""
    wait_loaded: bool = False
    """Hold ASGI startup until the graphs are loaded (Ray replicas: no traffic before ready)."""

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_choices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.speedup is not None and not self.speedup >= 1:
            raise ValueError(f"speedup must be >= 1, got {self.speedup}")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty (omit it to serve without a key)")

    @property
    def model_id(self) -> str:
        return self.model_name or Path(self.export).resolve().name
