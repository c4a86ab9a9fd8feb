"""Python SDK for the bitplan service: ``Client`` (sync) and ``AsyncClient`` over httpx.

Imports only httpx, pydantic and ``service.schemas`` — no torch, Ray, SQLAlchemy or FastAPI —
so it installs on a laptop. Server errors become typed exceptions carrying the server's
message::

    from service.client import Client
    with Client("http://127.0.0.1:8000", token=None) as c:
        model = c.register_model("builtin:minilm-l6")
        job = c.submit(model.id, budgets={"avg_bits": 3.3}, formats={"bits": [2, 3, 4, 8]})
        job = c.wait(job.id, timeout=600, on_progress=lambda j: print(j.phase, j.progress))
        policy = c.policy(job.policy_ids[0])

Your own model and data: ``c.register_model(export="net.pt2")`` (a torch.export program) and
``data = c.upload_data("photos/")`` (a folder of images, zipped on the fly; or a .zip/.tar.gz,
.safetensors/.npz, .txt/.jsonl file), then ``c.submit(model.id, {"avg_bits": 4},
calibration={"source": data.source}, image_size=224, image_mean=[0.485, 0.456, 0.406],
image_std=[0.229, 0.224, 0.225])``.

Import from ``service.client`` (the documented path); the modules behind it are ``sync``,
``aio``, ``errors`` and ``wire`` (what both clients send and read).
"""
from __future__ import annotations

from service.client.aio import AsyncClient
from service.client.errors import (BitplanError, ConflictError, InvalidRequest, JobFailed, NotFound, ServerError,
                                   Unauthorized, WaitTimeout)
from service.client.sync import Client
from service.client.wire import DEFAULT_URL  # noqa: F401  (importable from here, as before)

__all__ = ["Client", "AsyncClient", "BitplanError", "InvalidRequest", "Unauthorized", "NotFound", "ConflictError",
           "ServerError", "JobFailed", "WaitTimeout"]
