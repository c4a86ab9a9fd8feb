"""The API, end to end: a real ``bitplan serve`` (uvicorn + local Ray) on SQLite and on the real
PostgreSQL, driven over HTTP with httpx and with the SDK."""
from __future__ import annotations

import io
import json
import re
import threading
import time
import zipfile

import httpx
import pytest

from service.client import AsyncClient, ConflictError, InvalidRequest, NotFound, Unauthorized

pytestmark = pytest.mark.integration


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


def test_health_docs_and_openapi(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and all(v == "ok" for v in ready["checks"].values())
    assert {"database", "ray", "corpora", "torch", "builtin:minilm-l6", "builtin:smollm2-135m",
            "builtin:digits-cnn"} <= set(ready["checks"])
    assert httpx.get(f"{server.url}/docs").status_code == 200
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for p in ("/v1/models", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events",
              "/v1/policies/{policy_id}", "/v1/models/{model_id}/policies", "/v1/sensitivities/{table_id}"):
        assert p in paths


def test_token_is_required(server):
    r = httpx.get(f"{server.url}/v1/jobs")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized" and "Bearer" in r.json()["message"]
    assert httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    from service.client import Client
    with Client(server.url, "wrong") as c, pytest.raises(Unauthorized):
        c.list()


def test_register_same_model_twice_returns_same_record(server, digits_id):
    r = httpx.post(f"{server.url}/v1/models", json={"ref": "builtin:digits-cnn"}, headers=_auth(server), timeout=120)
    assert r.status_code == 200 and r.json()["id"] == digits_id and r.json()["n_layers"] == 6


def _torchscript_bytes() -> bytes:
    import torch
    m = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    return buf.getvalue()


def test_torchscript_upload_is_validated_and_content_addressed(server):
    data = _torchscript_bytes()
    with server.client() as c:
        a = c._req("POST", "/v1/models", files={"file": ("m.pt", data)}).json()
        b = c._req("POST", "/v1/models", files={"file": ("other-name.pt", data)}).json()
    assert a["id"] == b["id"] and a["kind"] == "classifier" and a["n_layers"] == 1
    # GPTQ reads a TorchScript model's layer inputs through its graph (no hooks needed): accepted
    r = httpx.post(f"{server.url}/v1/jobs", json={"model_id": a["id"], "budgets": {"avg_bits": 4.5}, "quantizer": "gptq",
                                                  "calibration": {"source": "digits"}}, headers=_auth(server))
    assert r.status_code == 201, r.text


BAD = [
    # (what, request kwargs, status, code, words in message)
    ("malformed JSON", {"content": b"{bad", "headers": {"content-type": "application/json"}}, 422, "invalid_request", "not valid JSON"),
    ("unknown model", {"json": {"model_id": "f" * 64, "budgets": {"avg_bits": 3.3}}}, 404, "unknown_model", "register it first"),
    ("budget below the cheapest policy", {"json": {"budgets": {"avg_bits": 1.5}}}, 422, "invalid_request", "below the cheapest"),
    ("budget above float", {"json": {"budgets": {"avg_bits": 40}}}, 422, "invalid_request", "feasible range"),
    ("empty formats", {"json": {"budgets": {"avg_bits": 3.3}, "formats": {"bits": []}}}, 422, "invalid_request", "at least one bit-width"),
    ("bits out of range", {"json": {"budgets": {"avg_bits": 3.3}, "formats": {"bits": [1, 4]}}}, 422, "invalid_request", "not supported"),
    ("absurd calibration size", {"json": {"budgets": {"avg_bits": 3.3}, "calibration": {"n_samples": 10**9}}}, 422, "invalid_request", "calibration.n_samples"),
    ("absurd group size", {"json": {"budgets": {"avg_bits": 3.3}, "formats": {"group_size": 10**9}}}, 422, "invalid_request", "group_size"),
    ("unknown proxy", {"json": {"budgets": {"avg_bits": 3.3}, "proxy": "magic"}}, 422, "invalid_request", "unknown proxy"),
    ("unknown solver", {"json": {"budgets": {"avg_bits": 3.3}, "solver": "magic"}}, 422, "invalid_request", "solver"),
    ("unknown budget metric", {"json": {"budgets": {"speed": 3}}}, 422, "invalid_request", "unknown budget metric"),
    ("no budget", {"json": {"budgets": {}}}, 422, "invalid_request", "at least one budget"),
    ("unknown field", {"json": {"budgets": {"avg_bits": 3.3}, "bitz": 3}}, 422, "invalid_request", "bitz"),
    ("unknown quantizer", {"json": {"budgets": {"avg_bits": 3.3}, "quantizer": "awq"}}, 422, "invalid_request", "quantizer"),
    ("bad gptq parameter", {"json": {"budgets": {"avg_bits": 3.3}, "quantizer": "gptq", "quantizer_params": {"damp": 5}}}, 422, "invalid_request", "damp must be"),
    ("joint with gptq", {"json": {"budgets": {"avg_bits": 3.3}, "solver": "joint", "quantizer": "gptq"}}, 422, "invalid_request", "GPTQ after pruning"),
    ("negative judge samples", {"json": {"budgets": {"avg_bits": 3.3}, "judge_samples": -1}}, 422, "invalid_request", "judge_samples"),
    ("no refine time", {"json": {"budgets": {"avg_bits": 3.3}, "refine_seconds": 0}}, 422, "invalid_request", "refine_seconds"),
    ("unknown device", {"json": {"budgets": {"avg_bits": 3.3}, "device": "tpu"}}, 422, "invalid_request", "device"),
    ("a target refuses what it cannot serve", {"json": {"budgets": {"avg_bits": 4.5}, "target": "llamacpp", "formats": {"bits": [4]}}}, 422, "invalid_request", "cannot serve w4g32a"),
    ("unknown runtime format", {"json": {"budgets": {"avg_bits": 4.5}, "formats": {"names": ["q9_K"]}}}, 422, "invalid_request", "unknown format 'q9_K'"),
    ("unknown target", {"json": {"budgets": {"avg_bits": 4.5}, "target": "ollama"}}, 422, "invalid_request", "target"),
    ("runtime formats with gptq", {"json": {"budgets": {"avg_bits": 6}, "formats": {"names": ["fp8", "nvfp4"]}, "quantizer": "gptq"}}, 422, "invalid_request", "use --quantizer rtn"),
    ("text data for a classifier", {"json": {"budgets": {"avg_bits": 3.3}, "calibration": {"text": "hello"}}}, 422, "invalid_request", "digits"),
]


@pytest.mark.parametrize("what,kw,status,code,words", BAD, ids=[b[0] for b in BAD])
def test_bad_job_requests_are_4xx_with_a_message(server, digits_id, what, kw, status, code, words):
    kw = dict(kw)  # the table is shared by both backends' runs: never mutate it
    if "json" in kw and "model_id" not in kw["json"]:
        kw = {"json": {"model_id": digits_id, **kw["json"]}}
    before = httpx.get(f"{server.url}/v1/jobs", params={"limit": 500}, headers=_auth(server)).json()["items"]
    r = httpx.post(f"{server.url}/v1/jobs", headers={**_auth(server), **kw.pop("headers", {})}, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and words in body["message"], body
    after = httpx.get(f"{server.url}/v1/jobs", params={"limit": 500}, headers=_auth(server)).json()["items"]
    assert [j["id"] for j in after] == [j["id"] for j in before]  # nothing stored, nothing lost


def test_bad_model_registrations(server):
    h = _auth(server)
    r = httpx.post(f"{server.url}/v1/models", json={"ref": "builtin:nope"}, headers=h, timeout=60)
    assert r.status_code == 422 and "unknown model" in r.json()["message"]
    r = httpx.post(f"{server.url}/v1/models", json={"ref": "hf:/etc"}, headers=h)
    assert r.status_code == 403 and r.json()["code"] == "path_not_allowed"
    r = httpx.post(f"{server.url}/v1/models", json={"ref": "http://x"}, headers=h)
    assert r.status_code == 422
    r = httpx.post(f"{server.url}/v1/models", files={"file": ("m.pkl", b"\x80\x04K\x01.")}, headers=h)
    assert r.status_code == 422 and "not a TorchScript archive" in r.json()["message"]
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("x/data.pkl", b"nope")
    r = httpx.post(f"{server.url}/v1/models", files={"file": ("m.pt", zbuf.getvalue())}, headers=h, timeout=60)
    assert r.status_code == 422 and "TorchScript" in r.json()["message"]
    big = b"PK\x03\x04" + b"\0" * (3 << 20)  # the test server's upload limit is 2 MiB
    r = httpx.post(f"{server.url}/v1/models", files={"file": ("big.pt", big)}, headers=h)
    assert r.status_code == 413 and r.json()["code"] in ("body_too_large", "upload_too_large")


def test_bad_queries(server):
    h = _auth(server)
    assert httpx.get(f"{server.url}/v1/jobs", params={"status": "weird"}, headers=h).status_code == 422
    r = httpx.get(f"{server.url}/v1/jobs", params={"cursor": "zzz"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"
    assert httpx.get(f"{server.url}/v1/jobs/nope", headers=h).json()["code"] == "not_found"
    assert httpx.get(f"{server.url}/v1/policies/nope", headers=h).status_code == 404
    assert httpx.get(f"{server.url}/v1/sensitivities/nope", headers=h).status_code == 404
    assert httpx.get(f"{server.url}/v1/models/nope/policies", headers=h).status_code == 404


def test_job_runs_to_policies_and_the_table_is_reused(server, digits_id):
    with server.client() as c:
        seen = []
        job = c.submit(digits_id, [{"avg_bits": 3.3}, {"avg_bits": 4.3}], proxy="measured", solver="ilp")
        job = c.wait(job.id, timeout=300, poll_interval=0.2, on_progress=lambda j: seen.append((j.status, j.progress)))
        assert job.status == "succeeded" and len(job.policy_ids) == 2 and not job.sensitivity_cached
        progress = [p for s, p in seen if s == "running"]
        assert progress == sorted(progress)  # the bar never goes backwards
        for pid, budget in zip(job.policy_ids, (3.3, 4.3)):
            pol = c.policy(pid)
            assert pol["schema"] == "bitplan.policy/v1" and pol["cost"]["avg_bits"] <= budget + 1e-9
            assert pol["measured"]["metric"] == "kl_to_float" and "3" in pol["measured"]["uniform"]
        table = c.sensitivity(job.sensitivity_id)
        assert table["proxy"] == "measured" and len(table["values"]) == 6
        events = c.events(job.id)
        assert events[0].status == "queued" and events[-1].status == "succeeded"
        assert {"sensitivity", "solve", "evaluate"} <= {e.phase for e in events}
        streamed = list(c.stream_events(job.id))
        assert [e.seq for e in streamed] == [e.seq for e in events]

        again = c.wait(c.submit(digits_id, {"avg_bits": 3.8}, proxy="measured", solver="ilp").id, timeout=300)
        assert again.sensitivity_cached and again.sensitivity_id == job.sensitivity_id
        # the stored table was used, not measured again: no measurement progress in its log
        events = c.events(again.id)
        assert "sensitivity table reused from cache" in [e.message for e in events]
        measuring = [e.message for e in events if e.phase == "sensitivity" and re.search(r"chunks|\bw\d+g", e.message)]
        assert measuring == []
        listed = {p.id for p in c.model_policies(digits_id)}
        assert set(job.policy_ids) | set(again.policy_ids) <= listed


def test_idempotent_and_concurrent_submissions(server, digits_id):
    body = {"model_id": digits_id, "budgets": {"avg_bits": 3.6}, "proxy": "orthogonality", "solver": "lp",
            "refine": False}
    results, errors = [], []

    def submit(i: int) -> None:
        try:
            r = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=120,
                           headers={**_auth(server), "Idempotency-Key": f"concurrent-{server.port}-{i % 25}"})
            results.append((i % 25, r.status_code, r.json()["id"]))
        except Exception as e:  # pragma: no cover - shown by the assert
            errors.append(repr(e))
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    by_key: dict[int, set] = {}
    for k, status, jid in results:
        assert status in (200, 201)
        by_key.setdefault(k, set()).add(jid)
    assert len(by_key) == 25 and all(len(v) == 1 for v in by_key.values())
    assert sum(1 for _, s, _ in results if s == 201) == 25
    with server.client() as c:
        r = httpx.post(f"{server.url}/v1/jobs", json={**body, "seed": 1}, timeout=60,
                       headers={**_auth(server), "Idempotency-Key": f"concurrent-{server.port}-0"})
        assert r.status_code == 409 and r.json()["code"] == "idempotency_conflict"
        with pytest.raises(ConflictError):
            c.submit(digits_id, {"avg_bits": 3.9}, idempotency_key=f"concurrent-{server.port}-0")
        for ids in by_key.values():  # do not leave 25 jobs for the other tests to wait behind
            try:
                c.cancel(next(iter(ids)))
            except ConflictError:
                pass
        for ids in by_key.values():
            assert c.wait(next(iter(ids)), timeout=300, raise_on_failure=False).status in ("succeeded", "cancelled")


def test_cancel_stops_a_running_job(server):
    with server.client() as c:
        minilm = c.register_model("builtin:minilm-l6")
        job = c.submit(minilm.id, {"avg_bits": 3.3}, calibration={"n_samples": 32})
        deadline = time.monotonic() + 180
        while c.get(job.id).phase not in ("sensitivity", "evaluate", "solve", "refine"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert c.cancel(job.id).status in ("running", "cancelled")
        final = c.wait(job.id, timeout=300, poll_interval=0.2, raise_on_failure=False)
        assert final.status == "cancelled"
        assert final.policy_ids == []
        assert c.cancel(job.id).status == "cancelled"  # cancelling twice is harmless
        with pytest.raises(NotFound):
            c.cancel("does-not-exist")


def test_list_filters_and_cursor_pages(server, digits_id):
    with server.client() as c:
        seen, cursor = [], None
        while True:
            page = c.list(model_id=digits_id, cursor=cursor, limit=4)
            seen += [j.id for j in page.items]
            cursor = page.next_cursor
            if not cursor:
                break
        assert len(seen) == len(set(seen)) >= 5
        assert all(j.status == "succeeded" for j in c.list(status="succeeded", limit=100).items)


def test_sdk_minilm_tiny_end_to_end(server):
    """The SDK path a user takes: register MiniLM, submit with a tiny calibration set, wait,
    check the policy meets its budget — here through the AsyncClient."""
    import asyncio

    async def go():
        async with AsyncClient(server.url, server.token, timeout=300) as c:
            model = await c.register_model("builtin:minilm-l6")
            job = await c.submit(model.id, {"avg_bits": 3.4}, formats={"bits": [2, 4, 8], "group_size": 64},
                                 proxy="measured", solver="ilp", refine=False,
                                 calibration={"n_samples": 4, "seq_len": 32}, evaluation={"n_samples": 8})
            events = [e async for e in c.stream_events(job.id)]
            job = await c.wait(job.id, timeout=600, poll_interval=0.5)
            return job, events, await c.policy(job.policy_ids[0])
    job, events, policy = asyncio.run(go())
    assert job.status == "succeeded" and events and events[-1].status == "succeeded"
    assert policy["cost"]["avg_bits"] <= 3.4 + 1e-9
    assert policy["measured"]["metric"] == "embedding_cosine_loss"
    assert policy["measured"]["value"] < policy["measured"]["uniform"]["2"]
    assert json.dumps(policy)  # canonical JSON round-trips
    with pytest.raises(InvalidRequest, match="below the cheapest"):
        from service.client import Client
        with Client(server.url, server.token) as c:
            c.submit(job.model_id, {"avg_bits": 1.0})


def _cli(server, *args: str, token: bool = True):
    import subprocess
    import sys
    extra = ["--url", server.url] + (["--token", server.token] if token else [])
    cmd, rest = args[0], list(args[1:])
    return subprocess.run([sys.executable, "-m", "service.cli", cmd, *extra, *rest], capture_output=True, text=True,
                          timeout=600)


def test_cli_submit_wait_status_policy(server, digits_id, tmp_path):
    out = tmp_path / "p.json"
    r = _cli(server, "submit", "--model", digits_id, "--budget", "avg_bits=3.5", "--proxy", "output_error",
             "--solver", "ilp", "--no-refine", "--runtime", "none", "--wait", "--out", str(out))
    assert r.returncode == 0, r.stderr
    policy = json.loads(out.read_text())
    assert policy["schema"] == "bitplan.policy/v1" and policy["cost"]["avg_bits"] <= 3.5 + 1e-9
    job_id = r.stdout.split()[1]
    r = _cli(server, "status", job_id)
    assert r.returncode == 0 and '"succeeded"' in r.stdout
    assert _cli(server, "status").returncode == 0
    again = tmp_path / "again.json"
    assert _cli(server, "policy", job_id, "--out", str(again)).returncode == 0
    assert json.loads(again.read_text()) == policy
    bad = _cli(server, "submit", "--model", digits_id, "--budget", "avg_bits=0.5")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "below" in bad.stderr
    noauth = _cli(server, "status", token=False)
    assert noauth.returncode == 2 and "token" in noauth.stderr
    down = subprocess_run_down(tmp_path)
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_remote_cli_sets_refine_and_its_judge(server, digits_id, tmp_path):
    """--refine-evals and --judge-samples travel CLI → API → Ray worker → the policy's refine record."""
    out = tmp_path / "r.json"
    r = _cli(server, "submit", "--model", digits_id, "--budget", "avg_bits=3.5", "--refine-evals", "5",
             "--judge-samples", "128", "--n-calib", "64", "--wait", "--out", str(out))
    assert r.returncode == 0, r.stderr
    info = json.loads(out.read_text())["refine"]
    assert info["judge_samples"] == 128 and info["judge_source"] == "held apart" and 1 <= info["evals"] <= 5


def test_gptq_job_through_the_service(server, digits_id, tmp_path):
    """quantizer=gptq runs in the Ray worker (Hessians from the job's calibration data); the
    policy records it, its table is cached apart from RTN tables, and exports carry it."""
    out = tmp_path / "g.json"
    r = _cli(server, "submit", "--model", digits_id, "--budget", "avg_bits=3.5", "--proxy", "measured", "--solver", "ilp",
             "--no-refine", "--quantizer", "gptq", "--quantizer-param", "act_order=true", "--n-calib", "64", "--seed", "11",
             "--wait", "--out", str(out))
    assert r.returncode == 0, r.stderr
    policy = json.loads(out.read_text())
    assert policy["quantizer"]["method"] == "gptq" and policy["quantizer"]["act_order"] is True
    with server.client() as c:
        job = c.wait(c.submit(digits_id, {"avg_bits": 3.5}, proxy="measured", solver="ilp", refine=False,
                              calibration={"n_samples": 64}, seed=11).id, timeout=300)
        rtn = c.policy(job.policy_ids[0])
        assert rtn["quantizer"] == {"method": "rtn", "scale_dtype": "float16"}
        assert job.sensitivity_cached is False  # the GPTQ table was not reused for an RTN job
    pid = r.stdout.split()[1]
    with server.client() as c:
        gid = c.get(pid).policy_ids[0]
    exp = httpx.get(f"{server.url}/v1/policies/{gid}/export", params={"format": "gptqmodel"}, headers=_auth(server))
    assert exp.status_code == 200 and exp.json()["quantization_config"]["desc_act"] is True


def subprocess_run_down(tmp_path):
    import subprocess
    import sys
    from tests.service.conftest import free_port
    return subprocess.run([sys.executable, "-m", "service.cli", "status", "--url", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60)


def test_evolved_proxy_through_the_service_and_reuse_by_name(server, digits_id):
    """proxy=evolved runs EMQ in the job (ground truth measured by Ray tasks), stores the
    program on the server, and a later job uses it as proxy=evolved:<name>."""
    name = f"svc-{server.port}"
    with server.client() as c:
        job = c.wait(c.submit(digits_id, {"avg_bits": 3.5}, proxy="evolved", solver="ilp", refine=False,
                              proxy_params={"name": name, "generations": 2, "population": 8, "n_policies": 16}).id,
                     timeout=300)
        table = c.sensitivity(job.sensitivity_id)
        assert table["proxy"] == "evolved" and table["diagnostics"]["name"] == name
        assert table["diagnostics"]["ground_truth_policies"] == 16 and "dW" in table["diagnostics"]["formula"]
        again = c.wait(c.submit(digits_id, {"avg_bits": 3.5}, proxy=f"evolved:{name}", solver="ilp", refine=False).id,
                       timeout=300)
        assert c.sensitivity(again.sensitivity_id)["diagnostics"]["formula"] == table["diagnostics"]["formula"]
        with pytest.raises(InvalidRequest, match="no stored evolved proxy"):
            c.submit(digits_id, {"avg_bits": 3.5}, proxy="evolved:does-not-exist")
        with pytest.raises(InvalidRequest, match="population"):
            c.submit(digits_id, {"avg_bits": 3.5}, proxy="evolved", proxy_params={"population": 0})


def test_joint_solver_through_the_service(server, digits_id):
    with server.client() as c:
        job = c.wait(c.submit(digits_id, {"avg_bits": 3.0}, solver="joint",
                              solver_params={"generations": 3, "pretrain_samples": 16, "finetune_samples": 8,
                                             "holdout_samples": 4, "epochs": 60, "finetune_epochs": 30}).id,
                     timeout=300)
        pol = c.policy(job.policy_ids[0])
        assert pol["solver"]["name"] == "joint" and pol["cost"]["avg_bits"] <= 3.0 + 1e-9
        assert "transferred" in pol["solver"]["predictor"] and job.sensitivity_id is None
        with pytest.raises(InvalidRequest, match="pruning ratio"):
            c.submit(digits_id, {"avg_bits": 3.0}, solver="joint", solver_params={"ratios": [0, 1]})
        with pytest.raises(InvalidRequest, match="below the cheapest joint policy"):
            c.submit(digits_id, {"avg_bits": 0.5}, solver="joint")


def test_a_menu_of_runtime_formats_through_the_service(server, digits_id):
    """FP8 per tensor and per channel beside per-channel int4: the policy names the runtime
    formats, each has its uniform baseline, and the exporters that cannot express them say so."""
    with server.client() as c:
        job = c.wait(c.submit(digits_id, {"avg_bits": 6.5}, formats={"names": ["fp8", "fp8_pc", "w4pcs"]},
                              proxy="fisher", refine=False).id, timeout=300)
        pol = c.policy(job.policy_ids[0])
        assert {l.get("runtime") for l in pol["layers"]} <= {"fp8", "fp8_pc", None}
        assert any(l.get("runtime") for l in pol["layers"]) and pol["cost"]["avg_bits"] <= 6.5 + 1e-9
        assert {"fp8", "fp8_pc", "4"} <= set(pol["measured"]["uniform"])
        r = httpx.get(f"{server.url}/v1/policies/{job.policy_ids[0]}/export", params={"format": "gptqmodel"},
                      headers=_auth(server))
        assert r.status_code == 422 and "cannot express" in r.text


def test_policy_export_is_immutable_with_an_etag(server, digits_id):
    with server.client() as c:
        job = c.wait(c.submit(digits_id, {"avg_bits": 5.0}, formats={"bits": [4, 8], "group_size": 32,
                                                                     "symmetric": True},
                              proxy="output_error", solver="ilp", refine=False).id, timeout=300)
        pid = job.policy_ids[0]
    h = _auth(server)
    r = httpx.get(f"{server.url}/v1/policies/{pid}/export", params={"format": "gptqmodel"}, headers=h)
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    cfg = r.json()["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["sym"] is True
    again = httpx.get(f"{server.url}/v1/policies/{pid}/export", params={"format": "gptqmodel"},
                      headers={**h, "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{server.url}/v1/policies/{pid}/export", params={"format": "modelopt"}, headers=h).status_code == 200
    bad = httpx.get(f"{server.url}/v1/policies/{pid}/export", params={"format": "llamacpp"}, headers=h)
    assert bad.status_code == 422 and "no GGUF name" in bad.json()["message"]
    unknown = httpx.get(f"{server.url}/v1/policies/{pid}/export", params={"format": "onnx"}, headers=h)
    assert unknown.status_code == 422 and "unknown export format" in unknown.json()["message"]
    assert httpx.get(f"{server.url}/v1/policies/nope/export", params={"format": "gptqmodel"}, headers=h).status_code == 404
