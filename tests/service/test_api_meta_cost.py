"""GET /v1/meta serves the server's own definitions (the registries' names, the format menu, the
recipe) and POST /v1/cost prices a layer → format choice with search's cost model, so the
dashboard restates neither. FastAPI's TestClient, no lifespan; a one-model store stands in."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.config import Settings

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL_ID = "a" * 64
# fc1: 64 rows × 128 inputs; fc2: 10 rows × 100 inputs (g64 leaves a partial last group)
LAYERS = [{"name": "fc1", "kind": "linear", "shape": [64, 128], "numel": 8192, "in_features": 128, "macs": 8192},
          {"name": "fc2", "kind": "linear", "shape": [10, 100], "numel": 1000, "in_features": 100, "macs": 1000}]
N = 8192 + 1000


class OneModelStore:
    def get_model(self, model_id):
        if model_id != MODEL_ID:
            return None
        return SimpleNamespace(id=MODEL_ID, ref="builtin:tiny", kind="classifier", info={"layers": LAYERS})


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    app = create_app(Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", api_token=TOKEN))
    app.state.store = OneModelStore()
    return TestClient(app, headers=AUTH)


def cost(client, **body):
    return client.post("/v1/cost", json={"model_id": MODEL_ID, **body})


# ----------------------------------------------------------------------------- /v1/meta
def test_meta_serves_the_registries_not_copies_of_them(client):
    from search.budgets import METRICS
    from search.exports import EXPORTERS
    from search.params import PROXY_PARAMS, QUANTIZER_PARAMS
    from search.solvers import SOLVERS
    from service.api.refs import BUILTIN_REFS
    m = client.get("/v1/meta").json()
    assert m["exporters"] == sorted(EXPORTERS) and "torchao" in m["exporters"]
    assert m["proxies"] == sorted(PROXY_PARAMS)
    assert m["solvers"] == list(SOLVERS)
    assert sorted(m["quantizers"]) == sorted(QUANTIZER_PARAMS) and m["quantizers"][0] == "rtn"  # JobCreate's default
    assert m["builtin_models"] == list(BUILTIN_REFS)
    assert m["budget_metrics"] == list(METRICS)
    assert {"wikitext2-test", "pydoc", "digits"} <= set(m["data_sources"])


def test_meta_serves_the_format_menu_and_the_recipe(client):
    from search.defaults import DEFAULT_RECIPE, RECIPES
    from search.spec import DEFAULT_SOLVER, REFERENCE_GROUP
    from service.schemas import Formats
    from search.defaults import DEFAULT_BITS
    from search.runtime_formats import RUNTIME_FORMATS
    from search.targets import TARGETS
    m = client.get("/v1/meta").json()
    runtime, targets = m["formats"].pop("runtime"), m["formats"].pop("targets")
    assert m["formats"] == {"default": Formats(bits=list(DEFAULT_BITS)).model_dump(), "min_bits": 2, "max_bits": 8,
                            "float_bits": 16, "reference_group_size": REFERENCE_GROUP}
    assert list(runtime) == list(RUNTIME_FORMATS) and runtime["q4_K"]["bits_per_weight"] == 4.5
    assert runtime["q4_K"]["fallback"] == "q5_0"
    assert targets["llamacpp"]["exporters"][0] == "gguf" and set(targets) == set(TARGETS)
    assert m["exporter_kinds"]["llamacpp"].startswith("config:")
    assert m["recipe"]["solver"] == DEFAULT_SOLVER
    assert m["recipe"]["default"] == {"proxy": DEFAULT_RECIPE[0], "refine_method": DEFAULT_RECIPE[1]}
    assert m["recipe"]["by_kind"] == {k: {"proxy": p, "refine_method": r} for k, (p, r) in RECIPES.items()}


def test_meta_keeps_its_earlier_fields(client):
    m = client.get("/v1/meta").json()
    assert m["job_statuses"]["SUCCEEDED"] == "succeeded" and "cancelled" in m["terminal"]
    assert m["phases"][0] == "load" and m["transitions"]["queued"]


def test_every_list_of_export_formats_names_every_exporter(client):
    from search.exports import EXPORTERS
    from service.api.messages import _EXAMPLES
    param = next(p for p in client.get("/openapi.json").json()["paths"]["/v1/policies/{policy_id}/export"]["get"]
                 ["parameters"] if p["name"] == "format")
    for text in (_EXAMPLES["format"], param["description"]):
        assert all(name in text for name in EXPORTERS), text


# ----------------------------------------------------------------------------- /v1/cost
def test_cost_of_a_policy_by_hand(client):
    """fc1 in w4g64a: 8192·4 bits + 64 rows · 2 groups · (16-bit scale + 4-bit zero point);
    fc2 left out, so in float: 1000·16."""
    r = cost(client, layers=[{"name": "fc1", "bits": 4, "group_size": 64, "symmetric": False, "numel": 8192}])
    assert r.status_code == 200, r.text
    out = r.json()
    bits = 8192 * 4 + 64 * 2 * (16 + 4) + 1000 * 16
    assert out["cost"]["avg_bits"] == pytest.approx(bits / N)
    assert out["cost"]["size_bytes"] == bits / 8
    assert out["cost"]["bops"] == (8192 * 4 + 1000 * 16) * 16  # macs · w_bits · 16-bit activations
    assert (out["n_layers"], out["n_weights"], out["formats"]) == (2, N, [])


def test_cost_of_uniform_formats_in_the_order_asked(client):
    asked = [{"bits": 3, "group_size": None, "symmetric": True}, {"bits": 4, "group_size": 64},
             {"bits": 16, "group_size": None}, {"bits": 3, "group_size": None, "symmetric": True}]
    out = cost(client, formats=asked).json()
    assert [f["label"] for f in out["formats"]] == ["w3pcs", "w4g64a", "fp16", "w3pcs"]
    w3pcs = 8192 * 3 + 64 * 16 + 1000 * 3 + 10 * 16          # one symmetric scale per row
    w4g64 = 8192 * 4 + 64 * 2 * 20 + 1000 * 4 + 10 * 2 * 20  # fc2: 100 inputs → 2 groups a row
    assert out["formats"][0]["cost"]["avg_bits"] == pytest.approx(w3pcs / N)
    assert out["formats"][1]["cost"]["avg_bits"] == pytest.approx(w4g64 / N)
    assert out["formats"][2]["cost"]["avg_bits"] == 16.0
    assert out["cost"]["avg_bits"] == 16.0  # no layers chosen: the float model


@pytest.mark.parametrize("body, status, words", [
    ({"model_id": "b" * 64}, 404, "no model"),
    ({"layers": [{"name": "fc9", "bits": 4, "group_size": 64}]}, 422, "layers.0.name 'fc9' is not a quantizable layer"),
    ({"layers": [{"name": "fc1", "bits": 1, "group_size": 64}]}, 422, "use 2..8 or 16"),
    ({"formats": [{"bits": 4, "group_size": 0}]}, 422, "formats.0: group_size=0 is invalid"),
    ({"formats": [{"bits": 4}]}, 422, "formats.0.group_size: missing"),
    ({"layers": [{"name": "fc1", "bits": 4, "group_size": 64}] * 2}, 422, "given twice"),
    ({"layers": [{"name": "fc1", "bits": 4, "group_size": 64, "numel": 5}]}, 422, "does not match"),
    ({"layers": {"fc1": 4}}, 422, "layers"),
    ({"budget": {"avg_bits": 3}}, 422, "budget"),
])
def test_bad_cost_requests_are_a_clear_4xx(client, body, status, words):
    r = client.post("/v1/cost", json={"model_id": MODEL_ID, **body})
    assert r.status_code == status, r.text
    assert words in r.json()["message"], r.json()


def test_cost_needs_the_token_and_documents_its_errors(client):
    assert client.post("/v1/cost", json={"model_id": MODEL_ID}, headers={"Authorization": ""}).status_code == 401
    op = client.get("/openapi.json").json()["paths"]["/v1/cost"]["post"]
    assert {"200", "401", "404", "413", "422"} <= set(op["responses"])


# ----------------------------------------------------------------------------- the dashboard's modules
def test_dashboard_modules_are_served_as_javascript(client):
    import re
    static = Path(__file__).resolve().parents[2] / "service" / "static"
    for module in sorted((static / "js").glob("*.js")):
        r = client.get(f"/static/js/{module.name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), module.name
        for dep in re.findall(r'from "\./([\w.]+)"', module.read_text()):
            assert (static / "js" / dep).is_file(), (module.name, dep)
