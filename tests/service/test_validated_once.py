"""A job's spec is validated once (issue 17). A served job: at the API, on submission; the
dispatcher maps the stored request again but checks nothing, and the job task parses its specs
once (``Checked.accepted``) and hands that to every budget point and sensitivity chunk. A local
run: ``bitplan search`` validates before torch loads and the pipeline takes the result on. No
Ray, no model: the steps around each call are stand-ins that record what they were given."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import search.validate as validation
from search.spec import SearchSpec
from service.config import Settings
from service.schemas import JobCreate

LAYERS = [{"name": f"model.layers.{i}.mlp.up_proj", "kind": "Linear", "shape": [256, 64], "numel": 16384,
           "in_features": 64, "macs": 16384} for i in range(4)]
BODY = {"model_id": "m", "budgets": [{"avg_bits": 3.3}, {"avg_bits": 4.2}, {"avg_bits": 5.0}], "proxy": "fisher",
        "solver": "ilp", "refine": False}


@pytest.fixture
def calls(monkeypatch):
    """How often the validation and its parse run, wherever they are called from."""
    import service.jobspec
    import workers.prepare
    count = {"validate": 0, "parse": 0}
    real_validate, real_parse = validation.validate, validation.static_check

    def validate(*a, **kw):
        count["validate"] += 1
        return real_validate(*a, **kw)

    def parse(*a, **kw):
        count["parse"] += 1
        return real_parse(*a, **kw)

    for module in (validation, service.jobspec, workers.prepare):
        monkeypatch.setattr(module, "validate", validate)
    monkeypatch.setattr(validation, "static_check", parse)
    return count


class Recorder:
    """A Ray remote function's ``.options(...).remote(...)``, recorded."""

    def __init__(self) -> None:
        self.args: list[tuple] = []

    def options(self, **_):
        return self

    def remote(self, *args):
        self.args.append(args)
        return "ref"


def test_a_served_job_is_validated_at_submission_only(calls, monkeypatch):
    from service import dispatcher as dispatcher_mod
    from service.dispatcher import Dispatcher
    from service.jobspec import plan_job
    from workers import ray_jobs

    run_job = ray_jobs.run_job._function  # the job task's body, run here without Ray
    req = JobCreate.model_validate(BODY)
    plan = plan_job(req, "builtin:smollm2-135m", "m", "causal_lm", LAYERS, 8192)
    assert calls == {"validate": 1, "parse": 1}

    # the dispatcher launches it: a mapping, no check
    job_task = Recorder()
    monkeypatch.setattr(ray_jobs, "run_job", job_task)
    monkeypatch.setattr(ray_jobs, "_gpu_options", lambda: {})
    monkeypatch.setattr(dispatcher_mod, "ray", SimpleNamespace(
        get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "node"), cluster_resources=lambda: {"CPU": 2}))
    monkeypatch.setattr(dispatcher_mod, "Queue", lambda **_: "queue")
    monkeypatch.setattr(dispatcher_mod, "NodeAffinitySchedulingStrategy", lambda *a, **kw: None)
    model = SimpleNamespace(id="m", ref="builtin:smollm2-135m", kind="causal_lm", info={"layers": LAYERS})
    store = SimpleNamespace(get_model=lambda _: model, table_by_key=lambda _: None, progress=lambda *a, **kw: None)
    job = SimpleNamespace(id="j", model_id="m", request=req.model_dump(mode="json"),
                          sensitivity_key=plan.sensitivity_key)
    Dispatcher(store, Settings())._launch(job)
    assert calls == {"validate": 1, "parse": 1}
    (specs, texts, table, chunks, queue), = job_task.args
    assert specs == plan.specs

    # the job task: one parse for all three budget points, handed to each of them and their chunks
    seen = []
    monkeypatch.setattr(ray_jobs, "torch_threads", lambda: None)
    monkeypatch.setattr("workers.sources.load_model", lambda ref: SimpleNamespace(ref=ref, kind="classifier"))
    monkeypatch.setattr(ray_jobs, "launch_shares", lambda *a: None)
    monkeypatch.setattr(ray_jobs, "_fan_out", lambda spec_d, texts, n, queue, checked, shares: ("fan-out", checked))

    def run_search(spec, progress, loaded=None, table=None, compute_table=None, checked=None):
        seen.append((spec, checked, compute_table))
        raise ValueError("stop after the checks")  # a user error ends the job: enough for this test

    monkeypatch.setattr("workers.pipeline.run_search", run_search)
    out = run_job(specs, texts, None, chunks, None)
    assert out.error == "stop after the checks"
    assert calls == {"validate": 1, "parse": 2}
    (spec, checked, compute_table), = seen
    assert checked.specs[0] == spec and [s.budgets for s in checked.specs] == BODY["budgets"]
    assert compute_table == ("fan-out", checked)


def test_a_chunk_prepares_with_the_jobs_validation(calls, monkeypatch):
    from workers import ray_jobs
    got = {}
    monkeypatch.setattr("workers.prepare.prepare", lambda spec, **kw: got.update(kw) or "prepared")
    checked = validation.Checked.accepted([SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 4})])
    assert ray_jobs._prepared({"model": "builtin:digits-cnn", "budgets": {"avg_bits": 4}}, checked) == "prepared"
    assert got["checked"] is checked and calls == {"validate": 0, "parse": 1}


def test_the_pipeline_takes_a_checked_spec_on_and_checks_an_unchecked_one(calls):
    from workers.prepare import validate_static
    spec = SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 4}, proxy="fisher")
    checked = validation.validate(spec)
    proxy, solver, formats = validate_static(spec, checked)
    assert (proxy.name, solver, formats) == ("fisher", checked.parts.solver, checked.parts.formats)
    assert calls == {"validate": 1, "parse": 1}
    validate_static(spec)  # a library caller's spec, nobody checked it: validated here
    assert calls == {"validate": 2, "parse": 2}


def test_bitplan_search_validates_before_torch_and_hands_the_result_on(calls, monkeypatch, tmp_path):
    import service.report
    from service.cli import build_parser
    from service.cli.local import cmd_search
    got = {}

    def run_with_progress(spec, checked=None):
        got.update(spec=spec, checked=checked)
        raise ValueError("stop before the model loads")

    monkeypatch.setattr(service.report, "run_with_progress", run_with_progress)
    args = build_parser().parse_args(["search", "--model", "builtin:digits-cnn", "--budget", "avg_bits=4",
                                      "--proxy", "fisher", "--out", str(tmp_path / "p.json")])
    assert cmd_search(args) == 2
    assert calls == {"validate": 1, "parse": 1}
    assert got["checked"].specs == [got["spec"]]
