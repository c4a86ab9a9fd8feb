"""Data uploads (POST /v1/data, GET /v1/data/{id}) and the data sources a job may name.

The upload checks run through FastAPI's TestClient (no database or Ray is needed to store data);
the flow that needs both (upload → job naming ``upload:<id>``, the SDK, the CLI, a torch.export
model upload) runs against real ``bitplan serve`` processes on both backends."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.config import Settings
from service.jobspec import plan_job
from service.schemas import JobCreate
from service.uploads import PathNotAllowed, load_record
from tests.service.conftest import Server

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- data builders
def png(color=(200, 30, 30), size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size=(9, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, "JPEG")
    return buf.getvalue()


def zip_of(files: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_of(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


def zip_with_symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cat/0.png", png())
        info = zipfile.ZipInfo("cat/1.png")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def safetensors(**arrays) -> bytes:
    from safetensors.numpy import save
    return save(arrays)


def labelled_zip() -> bytes:
    files = {f"photos/{c}/{i}.png": png((40 * i, 90, 20)) for c in ("cat", "dog") for i in range(3)}
    files["photos/notes.txt"] = b"not an image"
    files["photos/.DS_Store"] = b"junk"
    files["__MACOSX/photos/._cat"] = b"junk"
    return zip_of(files)


# ----------------------------------------------------------------------------- the HTTP layer alone
@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", api_token=None,
                    max_upload_bytes=2 << 20, max_extracted_bytes=4 << 20, max_upload_files=20)


@pytest.fixture
def client(settings) -> TestClient:
    return TestClient(create_app(settings))


def _post(client, name: str, data: bytes, **form):
    return client.post("/v1/data", files={"file": (name, data)}, data=form or None)


def _left(settings) -> list[str]:
    """Everything under the upload folder (nothing may stay behind a refusal)."""
    up = settings.upload_dir
    return sorted(str(p.relative_to(up)) for p in up.rglob("*")) if up.exists() else []


def test_an_image_folder_is_stored_by_sha256_with_its_classes(client, settings):
    data = labelled_zip()
    r = _post(client, "photos.zip", data)
    assert r.status_code == 201, r.text
    rec, sha = r.json(), hashlib.sha256(data).hexdigest()
    assert rec == {"id": sha, "kind": "images", "samples": 6, "classes": ["cat", "dog"], "bytes": len(data),
                   "source": f"upload:{sha}", "name": "photos.zip", "created_at": rec["created_at"]}
    assert r.headers["location"] == f"/v1/data/{sha}"
    stored = settings.upload_dir / "data" / sha / "images"
    assert sorted(str(p.relative_to(stored)) for p in stored.rglob("*.png")) == \
        [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]  # the outer folder and non-images dropped
    assert not list(stored.rglob("*.txt")) and not list(stored.rglob(".DS_Store"))
    again = _post(client, "renamed.zip", data)
    assert again.status_code == 200 and again.json() == rec  # same bytes, same record
    assert client.get(f"/v1/data/{sha}").json() == rec
    assert client.get(f"/v1/data/{sha.upper()}").json() == rec
    assert not [p for p in _left(settings) if ".incoming" in p or ".staging" in p]


def test_unlabelled_tar_gz_and_jpeg(client):
    r = _post(client, "imgs.tar.gz", tar_of({"imgs/a.jpg": jpeg(), "imgs/b.png": png()}))
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "images" and r.json()["samples"] == 2 and r.json()["classes"] is None


@pytest.mark.parametrize("name,data,kind,samples", [
    ("t.npz", npz(inputs=np.zeros((5, 3, 8, 8), np.float32), labels=np.arange(5)), "tensors", 5),
    ("t.npz", npz(x=np.zeros((4, 16), np.float32)), "tensors", 4),
    ("t.safetensors", safetensors(inputs=np.zeros((7, 1, 8, 8), np.float32), labels=np.arange(7)), "tensors", 7),
    ("corpus.txt", "first paragraph\nstill first\n\nsecond paragraph\n\nthird".encode(), "text", 3),
    ("rows.jsonl", b'{"text": "a"}\n\n{"text": "b", "label": 1}\n', "jsonl", 2),
    ("no-suffix", b'{"text": "a"}\n', "jsonl", 1),
])
def test_tensor_and_text_uploads(client, name, data, kind, samples):
    r = _post(client, name, data)
    assert r.status_code == 201, r.text
    assert (r.json()["kind"], r.json()["samples"], r.json()["classes"]) == (kind, samples, None)


def test_kind_can_be_forced(client):
    r = _post(client, "data.bin", b"one\n\ntwo\n", kind="text")
    assert r.status_code == 201 and r.json()["kind"] == "text"
    r = _post(client, "data.bin", b"x", kind="video")
    assert r.status_code == 422 and "kind" in r.json()["message"]


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, inputs=np.array([{"a": 1}, None], dtype=object))
    return buf.getvalue()


def _bomb() -> bytes:  # 16 MiB of zeros in ~16 KiB: over the 4 MiB extraction limit
    return zip_of({"big/a.png": b"\0" * (16 << 20)}, zipfile.ZIP_DEFLATED)


REFUSED = [
    # (what, file name, bytes, status, words in the message)
    ("path traversal", "evil.zip", zip_of({"../evil.png": png()}), 422, "path traversal"),
    ("absolute path", "abs.zip", zip_of({"/etc/evil.png": png()}), 422, "absolute path"),
    ("traversal in tar", "evil.tar.gz", tar_of({"a/../../evil.png": png()}), 422, "path traversal"),
    ("symlink in tar", "link.tar.gz", tar_of({"cat/0.png": png()}, links={"cat/1.png": "/etc/passwd"}), 422, "link"),
    ("symlink in zip", "link.zip", zip_with_symlink(), 422, "link"),
    ("no images", "docs.zip", zip_of({"a.txt": b"x", "b.csv": b"1,2"}), 422, "no image files"),
    ("undecodable image", "bad.zip", zip_of({"c/0.png": png(), "c/1.png": b"\x89PNG garbage"}), 422,
     "c/1.png does not decode"),
    ("mixed layout", "mixed.zip", zip_of({"a.png": png(), "cat/b.png": png()}), 422, "class folder"),
    ("zip bomb", "bomb.zip", _bomb(), 413, "BITPLAN_MAX_EXTRACTED_BYTES"),
    ("too many files", "many.zip", zip_of({f"{i}.png": png() for i in range(21)}), 413, "BITPLAN_MAX_UPLOAD_FILES"),
    ("damaged zip", "broken.zip", b"PK\x03\x04" + b"\0" * 64, 422, "zip"),
    ("labels do not match", "t.npz", npz(inputs=np.zeros((5, 4), np.float32), labels=np.arange(4)), 422,
     "'labels' has shape [4] but 'inputs' has 5 samples"),
    ("float labels", "t.npz", npz(inputs=np.zeros((5, 4), np.float32), labels=np.zeros(5)), 422, "integers"),
    ("no inputs", "t.safetensors", safetensors(weights=np.zeros((2, 2), np.float32)), 422, "no array named 'inputs'"),
    ("one-dimensional inputs", "t.npz", npz(inputs=np.zeros(5, np.float32)), 422, "shape [samples, ...]"),
    ("pickled npz", "t.npz", _pickled_npz(), 422, "pickle"),
    ("damaged safetensors", "t.safetensors", b"\x10\0\0\0\0\0\0\0{not json at all", 422, "not a safetensors file"),
    ("bad jsonl", "rows.jsonl", b'{"text": "a"}\n{"txt": "b"}\n', 422, "line 2 has no \"text\""),
    ("jsonl not json", "rows.jsonl", b'{"text": "a"}\nnope\n', 422, "line 2 is not JSON"),
    ("not utf-8", "corpus.txt", b"caf\xe9 ol\xe9", 422, "not UTF-8"),
    ("empty text", "corpus.txt", b"\n\n  \n", 422, "empty"),
    ("empty file", "x.zip", b"", 422, "empty"),
    ("binary", "blob", bytes(range(256)) * 8, 422, "not a data file"),
    ("a model", "net.pt2", zip_of({"net/archive_format": b"pt2"}), 422, "POST /v1/models"),
    ("a single image", "cat.png", png(), 422, "single image"),
]


@pytest.mark.parametrize("what,name,data,status,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_uploads_are_4xx_with_a_message_and_leave_nothing(client, settings, what, name, data, status, words):
    before = _left(settings)
    r = _post(client, name, data)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["message"], body
    assert str(settings.var_dir) not in body["message"] and ".staging" not in body["message"]
    assert _left(settings) == before or _left(settings) == ["data"]  # at most the (empty) data folder
    assert client.get(f"/v1/data/{hashlib.sha256(data).hexdigest()}").status_code == 404


def test_over_the_upload_limit_is_413(client, settings):
    r = _post(client, "big.txt", b"a" * ((2 << 20) + 10))
    assert r.status_code == 413
    assert not [p for p in _left(settings) if ".incoming" in p]


def test_not_multipart_and_missing_file(client):
    r = client.post("/v1/data", json={"file": "x"})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["message"]
    r = client.post("/v1/data", data={"kind": "text"}, files={"other": ("a.txt", b"x")})
    assert r.status_code == 422 and "file: missing" in r.json()["message"]


def test_unknown_ids_are_404(client):
    for bad in ("0" * 64, "nope", "%00", "x" * 300):
        r = client.get(f"/v1/data/{bad}")
        assert r.status_code == 404 and "POST /v1/data" in r.json()["message"], bad
    assert client.get("/v1/data/../../etc").status_code == 404


# ----------------------------------------------------------------------------- jobspec: data sources
LAYERS = [{"name": "conv", "kind": "Conv2d", "shape": [8, 1, 3, 3], "numel": 72, "in_features": 9, "macs": 4000},
          {"name": "fc", "kind": "Linear", "shape": [10, 128], "numel": 1280, "in_features": 128, "macs": 1280}]


@pytest.fixture
def stored(client, settings) -> dict[str, str]:
    """One upload of each kind: kind → id."""
    out = {}
    for name, data in (("p.zip", labelled_zip()), ("t.npz", npz(inputs=np.zeros((6, 1, 8, 8), np.float32))),
                       ("c.txt", b"one\n\ntwo\n\nthree"), ("r.jsonl", b'{"text": "a"}\n{"text": "b"}\n')):
        r = _post(client, name, data)
        assert r.status_code == 201, r.text
        out[r.json()["kind"]] = r.json()["id"]
    return out


def _plan(settings, kind="classifier", ref="export:/m.pt2", **body):
    req = JobCreate.model_validate({"model_id": "m", "budgets": {"avg_bits": 4.0}, **body})
    return plan_job(req, ref, "m", kind, LAYERS, settings=settings)


def test_upload_sources_resolve_to_worker_paths(settings, stored):
    plan = _plan(settings, calibration={"source": f"upload:{stored['images']}", "n_samples": 4},
                 evaluation={"source": f"upload:{stored['tensors']}"}, image_size=8, resize=10, image_mean=[0.5],
                 image_std=[0.25], fold_batchnorm=True)
    spec = plan.specs[0]
    data = settings.upload_dir.resolve() / "data"
    assert spec["calib"] == f"images:{data / stored['images'] / 'images'}"
    assert spec["eval"] == f"tensors:{data / stored['tensors'] / 'data.npz'}"
    assert (spec["image_size"], spec["resize"], spec["image_mean"], spec["image_std"], spec["fold_batchnorm"]) == \
        (8, 10, [0.5], [0.25], True)
    text = _plan(settings, kind="causal_lm", ref="hf:/x", calibration={"source": f"upload:{stored['text']}"},
                 evaluation={"source": f"upload:{stored['jsonl']}"}).specs[0]
    assert text["calib"] == f"text:{data / stored['text'] / 'data.txt'}"
    assert text["eval"] == f"jsonl:{data / stored['jsonl'] / 'data.jsonl'}"


def test_new_fields_change_the_sensitivity_key_only_when_set(settings):
    base = _plan(settings, calibration={"source": "digits"})
    assert base.sensitivity_key == _plan(settings, calibration={"source": "digits"}, fold_batchnorm=False).sensitivity_key
    assert base.request_hash == _plan(settings, calibration={"source": "digits"}, fold_batchnorm=False).request_hash
    for extra in ({"fold_batchnorm": True}, {"image_size": 8}, {"image_mean": [0.4]}):
        assert _plan(settings, calibration={"source": "digits"}, **extra).sensitivity_key != base.sensitivity_key


BAD_SOURCES = [
    # (model kind, request fields, words in the ValueError)
    ("classifier", {"calibration": {"source": "upload:" + "0" * 64}}, "no uploaded data"),
    ("classifier", {"calibration": {"source": "wikitext2-valid"}}, "unknown for a classifier"),
    ("classifier", {"calibration": {"text": "some words"}}, "with POST /v1/data"),
    ("classifier", {"calibration": {"source": "UP:text"}}, "holds text"),
    ("causal_lm", {"calibration": {"source": "UP:images"}}, "holds images"),
    ("causal_lm", {"calibration": {"source": "digits"}}, "is unknown"),
    ("classifier", {"calibration": {"source": "UP:tensors", "n_samples": 100}}, "holds (6 samples)"),
    ("causal_lm", {"image_size": 224}, "image_size: only image models"),
    ("classifier", {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.2]}, "as many values as image_mean"),
    ("classifier", {"image_size": 32, "resize": 16}, "resize"),
    ("classifier", {"data_column": "img"}, "dataset:<dir>"),
]


@pytest.mark.parametrize("kind,fields,words", BAD_SOURCES, ids=[f"{b[0]}-{b[2][:20]}" for b in BAD_SOURCES])
def test_bad_sources_and_fields_are_refused_before_queueing(settings, stored, kind, fields, words):
    fields = json.loads(json.dumps(fields).replace('"UP:', '"upload:').replace("upload:images", f"upload:{stored['images']}")
                        .replace("upload:text", f"upload:{stored['text']}")
                        .replace("upload:tensors", f"upload:{stored['tensors']}"))
    with pytest.raises(ValueError) as e:
        _plan(settings, kind=kind, ref="hf:/x" if kind != "classifier" else "export:/m.pt2", **fields)
    assert words in str(e.value), str(e.value)


def test_server_data_paths_live_under_the_model_root(settings, tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "photos" / "cat").mkdir(parents=True)
    (root / "x.npz").write_bytes(npz(inputs=np.zeros((2, 3), np.float32)))
    (root / "ds").mkdir()
    monkeypatch.setenv("BITPLAN_MODEL_ROOT", str(root))
    settings = Settings(var_dir=settings.var_dir)  # the root comes from the settings, read once
    spec = _plan(settings, calibration={"source": "images:photos"}, evaluation={"source": "tensors:x.npz"}).specs[0]
    assert spec["calib"] == f"images:{root.resolve() / 'photos'}" and spec["eval"] == f"tensors:{root.resolve() / 'x.npz'}"
    spec = _plan(settings, calibration={"source": "dataset:ds"}, data_column="img", label_column="y").specs[0]
    assert (spec["data_column"], spec["label_column"]) == ("img", "y")
    with pytest.raises(PathNotAllowed, match="outside the server's model root"):
        _plan(settings, calibration={"source": "images:/etc"})
    with pytest.raises(PathNotAllowed, match="outside"):
        _plan(settings, calibration={"source": "images:../"})
    with pytest.raises(ValueError, match="no folder 'nope'"):
        _plan(settings, calibration={"source": "images:nope"})
    monkeypatch.delenv("BITPLAN_MODEL_ROOT")
    with pytest.raises(PathNotAllowed, match="BITPLAN_MODEL_ROOT"):
        _plan(Settings(var_dir=settings.var_dir), calibration={"source": "images:photos"})


def test_gptq_is_accepted_for_torchscript_and_export(settings):
    # TorchScript layers get their Hessians through the graph probe (proxies/capture.py)
    _plan(settings, ref="torchscript:/m.pt", quantizer="gptq")
    _plan(settings, ref="export:/m.pt2", quantizer="gptq")


def test_record_lookup_refuses_odd_ids(settings, stored):
    assert load_record(settings.upload_dir, stored["images"])["kind"] == "images"
    for bad in ("", "../x", stored["images"][:-1], stored["images"] + "/", "x" * 64):
        assert load_record(settings.upload_dir, bad) is None


# ----------------------------------------------------------------------------- real servers
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def quiet(request, tmp_path_factory):
    """A real server that queues jobs but never runs them (this module checks what is stored)."""
    var = tmp_path_factory.mktemp(f"uploads-{request.param}")
    url = f"sqlite:///{var / 'bitplan.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    (var / "models" / "photos" / "cat").mkdir(parents=True)
    (var / "models" / "photos" / "cat" / "0.png").write_bytes(png())
    srv = Server(var, url, BITPLAN_MAX_RUNNING="0").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def digits(quiet) -> str:
    with quiet.client() as c:
        return c.register_model("builtin:digits-cnn").id


def _photo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    for c in ("zero", "one"):
        (d / c).mkdir(parents=True)
        for i in range(3):
            (d / c / f"{i}.png").write_bytes(png((80 * i, 10, 10), (8, 8)))
    (d / ".hidden").write_bytes(b"x")
    return d


def test_sdk_uploads_a_folder_and_a_job_names_it(quiet, digits, tmp_path):
    with quiet.client() as c:
        rec = c.upload_data(_photo_dir(tmp_path))
        assert (rec.kind, rec.samples, rec.classes) == ("images", 6, ["one", "zero"])
        assert rec.source == f"upload:{rec.id}" and c.data(rec.source) == rec
        assert c.upload_data(_photo_dir(tmp_path / "again")).id == rec.id  # zipped the same way: same bytes
        job = c.submit(digits, {"avg_bits": 4.0}, calibration={"source": rec.source, "n_samples": 4},
                       image_size=8, image_mean=[0.5], image_std=[0.5], fold_batchnorm=True)
        assert job.status == "queued"
        stored = c.get(job.id).request
        assert stored.calibration.source == rec.source and stored.image_size == 8 and stored.fold_batchnorm
        assert (stored.image_mean, stored.image_std) == ([0.5], [0.5])
        from service.client import InvalidRequest, NotFound
        with pytest.raises(InvalidRequest, match="no uploaded data"):
            c.submit(digits, {"avg_bits": 4.0}, calibration={"source": "upload:" + "1" * 64})
        with pytest.raises(InvalidRequest, match="holds 6 samples|holds \\(6 samples\\)"):
            c.submit(digits, {"avg_bits": 4.0}, calibration={"source": rec.source, "n_samples": 50})
        with pytest.raises(NotFound):
            c.data("2" * 64)
        with pytest.raises(InvalidRequest, match="line 1"):
            bad = tmp_path / "bad.jsonl"
            bad.write_text('{"no": 1}\n')
            c.upload_data(bad)


def test_async_sdk_uploads_a_file(quiet, tmp_path):
    from service.client import AsyncClient
    f = tmp_path / "t.safetensors"
    f.write_bytes(safetensors(inputs=np.zeros((3, 1, 8, 8), np.float32), labels=np.arange(3)))

    async def go():
        async with AsyncClient(quiet.url, quiet.token, timeout=120) as c:
            rec = await c.upload_data(f)
            return rec, await c.data(rec.id)
    rec, again = asyncio.run(go())
    assert rec.kind == "tensors" and rec.samples == 3 and again == rec


def test_server_data_paths_over_http(quiet, digits):
    import httpx
    h = {"Authorization": f"Bearer {quiet.token}"}
    body = {"model_id": digits, "budgets": {"avg_bits": 4.0}}
    r = httpx.post(f"{quiet.url}/v1/jobs", json={**body, "calibration": {"source": "images:photos"}}, headers=h)
    assert r.status_code == 201, r.text
    r = httpx.post(f"{quiet.url}/v1/jobs", json={**body, "calibration": {"source": "images:/etc"}}, headers=h)
    assert r.status_code == 403 and r.json()["code"] == "path_not_allowed"
    assert str(quiet.var_dir) not in r.json()["message"]
    r = httpx.post(f"{quiet.url}/v1/jobs", json={**body, "calibration": {"source": "tensors:none.npz"}}, headers=h)
    assert r.status_code == 422 and "no file 'none.npz'" in r.json()["message"]
    r = httpx.post(f"{quiet.url}/v1/jobs", json={**body, "image_mean": [0.1, 0.2]}, headers=h)
    assert r.status_code == 422 and "image_mean" in r.json()["message"]
    r = httpx.post(f"{quiet.url}/v1/jobs", json={**body, "image_std": [0.0]}, headers=h)
    assert r.status_code == 422 and "image_std" in r.json()["message"]


def _export_model(path: Path) -> bytes:
    """A tiny conv net for digits-shaped input, saved with torch.export (run in a subprocess so
    this test process never imports torch)."""
    code = ("import torch, sys\n"
            "m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),\n"
            "                        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)).eval()\n"
            "torch.export.save(torch.export.export(m, (torch.randn(1, 1, 8, 8),)), sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, timeout=300)
    return path.read_bytes()


def test_a_torch_export_upload_registers_as_export(quiet, tmp_path):
    data = _export_model(tmp_path / "net.pt2")
    with quiet.client() as c:
        m = c.register_model(export=tmp_path / "net.pt2")
        sha = hashlib.sha256(data).hexdigest()
        assert m.kind == "classifier" and m.n_layers == 2
        assert m.ref == f"export:{quiet.var_dir / 'uploads' / f'{sha}.pt2'}"
        (tmp_path / "same.bin").write_bytes(data)  # recognised by its contents, not only its name
        assert c.register_model(torchscript=tmp_path / "same.bin").id == m.id
        job = c.submit(m.id, {"avg_bits": 4.0}, quantizer="gptq")  # export programs take GPTQ
        assert job.status == "queued"
    assert not any(p.name.startswith(".incoming") for p in (quiet.var_dir / "uploads").iterdir())


# ----------------------------------------------------------------------------- CLI
def bitplan(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_cli_data_upload_and_submit_with_image_flags(quiet, digits, tmp_path):
    conn = ["--url", quiet.url, "--token", quiet.token]
    r = bitplan("data", "upload", str(_photo_dir(tmp_path)), *conn)
    assert r.returncode == 0, r.stderr
    source = r.stdout.splitlines()[0].strip()
    assert source.startswith("upload:") and "images, 6 samples, 2 classes" in r.stdout
    r = bitplan("data", "show", source, *conn)
    assert r.returncode == 0 and "images, 6 samples" in r.stdout
    r = bitplan("submit", "--model", digits, "--budget", "avg_bits=4", "--calib", source, "--image-size", "8",
                "--image-mean", "0.5", "--image-std", "0.25", "--fold-batchnorm", *conn)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[1]
    with quiet.client() as c:
        req = c.get(job_id).request
    assert req.calibration.source == source and req.image_size == 8 and req.image_std == [0.25] and req.fold_batchnorm
    # a local folder given to --calib is uploaded first
    r = bitplan("submit", "--model", digits, "--budget", "avg_bits=4", "--calib", str(_photo_dir(tmp_path / "b")), *conn)
    assert r.returncode == 0 and f"as {source}" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("args,words", [
    (["data", "upload", "/no/such/dir"], "no such file or folder"),
    (["submit", "--model", "m", "--budget", "avg_bits=4", "--image-mean", "1,2"], "give 1 or 3 values"),
    (["submit", "--model", "m", "--budget", "avg_bits=4", "--image-std", "0.2,-1,0.3"], "must be positive"),
    (["submit", "--model", "m", "--budget", "avg_bits=4", "--image-size", "big"], "whole number of pixels"),
    (["search", "--model", "builtin:digits-cnn", "--budget", "avg_bits=4", "--image-mean", "1,2"], "give 1 or 3"),
    (["search", "--model", "builtin:digits-cnn", "--budget", "avg_bits=4", "--image-mean", "a,b,c"], "numbers"),
    (["search", "--model", "builtin:digits-cnn", "--budget", "avg_bits=4", "--image-size", "64", "--resize", "32"],
     "resize 32 must be at least image_size"),
])
def test_cli_bad_values_exit_2_with_one_line(args, words):
    r = bitplan(*args, "--url", "http://127.0.0.1:9") if args[0] != "search" else bitplan(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitplan: error:") and words in lines[0], r.stderr


def test_cli_bad_upload_is_exit_2(quiet, tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"text": "ok"}\n[1, 2]\n')
    r = bitplan("data", "upload", str(bad), "--url", quiet.url, "--token", quiet.token)
    assert r.returncode == 2 and "line 2" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
