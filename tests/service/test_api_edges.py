"""Edges of the HTTP layer that only a real ``bitplan serve`` (uvicorn + local Ray) shows, on
SQLite and PostgreSQL: the events cursor's range, SSE resume headers, chunked oversize
bodies, what refused uploads leave on disk, server-side paths and /readyz."""
from __future__ import annotations

import hashlib
import io
import zipfile

import httpx
import pytest

from service.launcher import ServerProcess
from tests.service.conftest import Server

pytestmark = pytest.mark.integration
BODY_LIMIT = 64 << 10


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def quiet(request, tmp_path_factory):
    """A server that runs no jobs (queued jobs stay queued) with a 64 KiB body limit."""
    var = tmp_path_factory.mktemp(f"edges-{request.param}")
    url = f"sqlite:///{var / 'bitplan.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    srv = Server(var, url, BITPLAN_MAX_RUNNING="0", BITPLAN_MAX_BODY_BYTES=str(BODY_LIMIT)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def model_id(quiet) -> str:
    with quiet.client() as c:
        return c.register_model("builtin:digits-cnn").id


def _h(srv) -> dict:
    return {"Authorization": f"Bearer {srv.token}"}


def _torchscript(seed: int) -> bytes:
    import torch
    torch.manual_seed(seed)
    m = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    return buf.getvalue()


def _uploads(srv) -> set[str]:
    return {p.name for p in (srv.var_dir / "uploads").iterdir()}


# ----------------------------------------------------------------------------- events
def test_events_after_is_bounded_to_the_seq_column(quiet, model_id):
    h = _h(quiet)
    job = httpx.post(f"{quiet.url}/v1/jobs", json={"model_id": model_id, "budgets": {"avg_bits": 4}}, headers=h).json()
    url = f"{quiet.url}/v1/jobs/{job['id']}/events"
    assert httpx.get(url, params={"after": 2**31 - 1}, headers=h).json() == []
    for after in (2**31, 2**63, 10**30, -1):
        r = httpx.get(url, params={"after": after}, headers=h)
        assert r.status_code == 422, (after, r.text)
        assert r.json()["message"] == f"after: must be between 0 and 2147483647, got {after}"


def test_sse_ignores_a_last_event_id_that_is_no_seq(quiet, model_id):
    h = _h(quiet)
    job = httpx.post(f"{quiet.url}/v1/jobs", json={"model_id": model_id, "budgets": {"avg_bits": 4.5}}, headers=h).json()
    assert httpx.post(f"{quiet.url}/v1/jobs/{job['id']}/cancel", headers=h).json()["status"] == "cancelled"
    url = f"{quiet.url}/v1/jobs/{job['id']}/events"
    seqs = [e["seq"] for e in httpx.get(url, headers=h).json()]
    assert len(seqs) == 2  # queued, cancelled
    sse = {**h, "Accept": "text/event-stream"}
    for bad in ("abc", "-1", "2147483648", "9" * 30, "1e3"):
        r = httpx.get(url, headers={**sse, "Last-Event-ID": bad}, timeout=30)
        assert r.status_code == 200, (bad, r.text)
        assert [int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")] == seqs, bad
        assert r.text.rstrip().endswith('data: {"status": "cancelled"}')
    r = httpx.get(url, headers={**sse, "Last-Event-ID": str(seqs[0])}, timeout=30)
    assert [int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")] == seqs[1:]


# ----------------------------------------------------------------------------- body limits
def _chunks(n: int, size: int = 8192):
    for _ in range(n):
        yield b"x" * size


def test_a_chunked_oversize_body_gets_the_same_413_as_a_sized_one(quiet):
    h = {**_h(quiet), "content-type": "application/json"}
    with httpx.Client(base_url=quiet.url, timeout=60) as c:
        chunked = c.post("/v1/jobs", content=_chunks(3 * BODY_LIMIT // 8192), headers=h)
        assert "content-length" not in chunked.request.headers
        sized = c.post("/v1/jobs", content=b"x" * (3 * BODY_LIMIT), headers=h)
        for r in (chunked, sized):
            assert r.status_code == 413 and r.headers["content-type"] == "application/json", r.text
            assert r.json()["code"] == "body_too_large" and f"limit is {BODY_LIMIT} bytes" in r.json()["message"]
        assert c.get("/healthz").status_code == 200  # the connection is still usable
        # cancel reads no body: a chunked one is never counted, a declared oversize one is refused
        r = c.post("/v1/jobs/abc/cancel", content=b"x" * (BODY_LIMIT + 1), headers=h)
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"


def test_a_chunked_oversize_upload_is_413(quiet):
    limit = 2 << 20  # the test servers' BITPLAN_MAX_UPLOAD_BYTES
    before = _uploads(quiet)
    body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.pt\"\r\n\r\nPK\x03\x04"

    def stream():
        yield body
        yield from _chunks(limit // 8192 + 8)
    r = httpx.post(f"{quiet.url}/v1/models", content=stream(), timeout=60,
                   headers={**_h(quiet), "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large", r.text
    assert _uploads(quiet) == before


# ----------------------------------------------------------------------------- uploads
def test_refused_uploads_leave_nothing_and_never_show_server_paths(quiet):
    h, before = _h(quiet), _uploads(quiet)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("x/data.pkl", b"nope")
    for name, data in (("m.pkl", b"\x80\x04K\x01."), ("looks-like.pt", zbuf.getvalue()), ("empty.pt", b"")):
        r = httpx.post(f"{quiet.url}/v1/models", files={"file": (name, data)}, headers=h, timeout=120)
        assert r.status_code == 422 and r.json()["code"] == "invalid_model", r.text
        msg = r.json()["message"]
        assert str(quiet.var_dir) not in msg and "uploads" not in msg and ".incoming" not in msg, msg
        assert _uploads(quiet) == before, name
    assert "'looks-like.pt' is not a TorchScript archive" in \
        httpx.post(f"{quiet.url}/v1/models", files={"file": ("looks-like.pt", zbuf.getvalue())}, headers=h,
                   timeout=120).json()["message"]


def test_an_accepted_upload_is_stored_under_its_sha256(quiet):
    h, data = _h(quiet), _torchscript(1)
    r = httpx.post(f"{quiet.url}/v1/models", files={"file": ("m.pt", data)}, headers=h, timeout=120)
    assert r.status_code in (200, 201), r.text
    final = quiet.var_dir / "uploads" / f"{hashlib.sha256(data).hexdigest()}.pt"
    assert r.json()["ref"] == f"torchscript:{final}" and final.read_bytes() == data
    assert not any(n.startswith(".incoming") for n in _uploads(quiet))


# ----------------------------------------------------------------------------- server-side paths
def test_relative_refs_resolve_against_the_model_root(quiet):
    h, root = _h(quiet), quiet.var_dir / "models"
    (root / "nested").mkdir(parents=True, exist_ok=True)
    (root / "nested" / "m.pt").write_bytes(_torchscript(2))
    r = httpx.post(f"{quiet.url}/v1/models", json={"ref": "torchscript:nested/m.pt"}, headers=h, timeout=120)
    assert r.status_code in (200, 201), r.text
    assert r.json()["ref"] == f"torchscript:{(root / 'nested' / 'm.pt').resolve()}"


@pytest.mark.parametrize("ref,status,words", [
    ("hf:not-there", 422, "'hf:not-there': 'not-there' is not an HF transformers directory"),
    ("torchscript:nested/none.pt", 422, "'torchscript:nested/none.pt': no such file 'nested/none.pt'"),
    ("hf:/etc", 403, "'/etc' is outside the server's model root"),
    ("hf:../../etc", 403, "is outside the server's model root"),
    ("hf:~nobody/x", 422, "is not an HF transformers directory"),
])
def test_path_errors_name_the_callers_path_never_the_servers(quiet, ref, status, words):
    r = httpx.post(f"{quiet.url}/v1/models", json={"ref": ref}, headers=_h(quiet), timeout=120)
    assert r.status_code == status, r.text
    msg = r.json()["message"]
    assert words in msg and str(quiet.var_dir) not in msg, msg


# ----------------------------------------------------------------------------- readiness
def test_readyz_is_503_without_the_corpora(tmp_path):
    empty = tmp_path / "no-corpora"
    empty.mkdir()
    srv = Server(tmp_path, f"sqlite:///{tmp_path / 'bitplan.db'}", BITPLAN_DATA_DIR=str(empty))
    ServerProcess.start(srv, 120, probe="/healthz")  # /readyz will say 503: wait for liveness only
    try:
        r = httpx.get(f"{srv.url}/readyz")
        body = r.json()
        assert r.status_code == 503 and body["status"] == "not ready", body
        assert body["checks"]["corpora"].startswith("missing corpora wikitext2-valid, wikitext2-test, tinyshakespeare")
        assert {k: v for k, v in body["checks"].items() if k != "corpora"} == {
            "database": "ok", "ray": "ok", "torch": "ok", "transformers": "ok", "builtin:minilm-l6": "ok",
            "builtin:smollm2-135m": "ok", "builtin:digits-cnn": "ok"}
        assert str(empty) not in r.text
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
    finally:
        srv.stop()
