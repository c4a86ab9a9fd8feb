"""The dashboard in a real browser (Debian chromium driven by Playwright) against a real server
with a real local Ray: submit from the form and watch the bar reach done, open the policy and
check its three charts, cancel a running job, see a validation error next to its field, page
through 500 jobs, and see the banner when the server goes away. Screenshots of every page go
to test-artifacts/dashboard/."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.service.conftest import Server

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run `make setup-browser` (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    var = tmp_path_factory.mktemp("dash")
    srv = Server(var, f"sqlite:///{var / 'bitplan.db'}", token="dash-token").start()
    yield srv
    srv.stop()


@pytest.fixture
def page(browser, dash):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(dash.url + "/")
    pg.fill("#token", dash.token)
    pg.click("#token-form button")
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_submit_watch_and_inspect_a_policy(page, dash):
    pg = page
    pg.goto(dash.url + "/#/submit")
    pg.select_option("select[name=builtin]", "builtin:digits-cnn")
    pg.click("#register")
    pg.wait_for_selector("#model-ok:has-text('registered builtin:digits-cnn')", timeout=180_000)
    pg.fill("textarea[name=budgets]", "avg_bits=3.3\navg_bits=3.8\navg_bits=4.3")
    pg.select_option("select[name=quantizer]", "gptq")
    shot(pg, "01-submit")
    pg.click("#submit-job")
    pg.wait_for_url("**/#/jobs/*", timeout=30_000)
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        bar = pg.query_selector(".bar.big")
        if bar:
            seen.append(int(bar.get_attribute("aria-valuenow")))
            if len(seen) == 3:
                shot(pg, "02-job-running")
        if pg.query_selector(".badge.succeeded"):
            break
        time.sleep(0.1)
    pg.wait_for_selector(".badge.succeeded", timeout=30_000)
    # the page may re-render between reading the bar and seeing the badge: read the final bar too
    seen.append(int(pg.get_attribute(".bar.big", "aria-valuenow")))
    shot(pg, "03-job-succeeded")
    assert seen == sorted(seen) and seen[-1] == 100
    assert len(pg.query_selector_all(".timeline .ph.done")) == 6
    assert len(pg.query_selector_all("#policies tbody tr")) == 3

    pg.click("#policies a >> nth=0")
    pg.wait_for_selector("#heatmap[data-cells]", timeout=30_000)
    shot(pg, "04-policy")
    assert "gptq" in pg.inner_text("#quantizer") and "act-order on" in pg.inner_text("#quantizer")
    bars = pg.evaluate("() => { const c = Chart.getChart(document.querySelector('#bits-chart'));"
                       " return {labels: c.data.labels.length, values: c.data.datasets[0].data} }")
    assert bars["labels"] == 6 and all(2 <= b <= 16 for b in bars["values"])  # one bar per layer
    assert len(set(bars["values"])) > 1  # a mixed policy, not a flat line
    assert pg.get_attribute("#heatmap", "data-cells") == str(6 * 12)  # layers × formats
    trade = pg.evaluate("() => Chart.getChart(document.querySelector('#tradeoff-chart')).data.datasets"
                        ".map(d => ({label: d.label, n: d.data.length}))")
    by = {d["label"].split(" (")[0]: d["n"] for d in trade}
    assert by["this job's policies"] == 3 and by["uniform"] == 4 and by["predicted loss increase"] == 3
    # the float model: a line, or (a loss such as kl_to_float, which is 0 for the float model, on a
    # log axis) a subtitle that states its value
    sub = pg.evaluate("() => Chart.getChart(document.querySelector('#tradeoff-chart')).options.plugins.subtitle")
    assert any(d["label"].startswith("float") for d in trade) or (sub["display"] and "float model" in sub["text"])
    with pg.expect_download() as dl:
        pg.click("#dl-policy")
    assert dl.value.suggested_filename.startswith("policy-")
    # the page restates no server definition: export buttons are the registry's, format labels
    # come from POST /v1/cost, and so do the uniform baselines' avg bits of a policy that does not
    # record them (one made before they were recorded): the same numbers as the recorded ones
    exporters = pg.evaluate("() => [...document.querySelectorAll('[data-export]')].map(b => b.dataset.export)")
    from search.exports import EXPORTERS
    assert exporters == sorted(EXPORTERS) and "torchao" in exporters
    assert re.search(r"\bw[2-8](g\d+|pc)[as] × \d", pg.inner_text("#bits-legend"))  # the server's labels
    uniform_x = "() => Chart.getChart(document.querySelector('#tradeoff-chart')).data.datasets[1].data.map(p => p.x)"
    recorded = pg.evaluate(uniform_x)

    def without_uniform_avg_bits(route):
        response = route.fetch()
        body = response.json()
        body["measured"].pop("uniform_avg_bits", None)
        route.fulfill(response=response, json=body)
    pg.route("**/v1/policies/*", without_uniform_avg_bits)
    with pg.expect_request("**/v1/cost"):
        pg.reload()
    pg.wait_for_selector("#heatmap[data-cells]", timeout=30_000)
    assert pg.evaluate(uniform_x) == pytest.approx(recorded)
    pg.unroute("**/v1/policies/*")


def test_validation_error_appears_next_to_the_field(page, dash):
    pg = page
    pg.goto(dash.url + "/#/submit")
    pg.wait_for_selector("#job-model option", state="attached")
    pg.fill("textarea[name=budgets]", "avg_bits=0.5")
    pg.click("#submit-job")
    pg.wait_for_selector("#err-budgets:has-text('below the cheapest')", timeout=30_000)
    assert "invalid" in pg.get_attribute("[data-field=budgets]", "class")
    pg.fill("textarea[name=budgets]", "avg_bits=3.5")
    pg.fill("input[name=bits]", "1,4")
    pg.click("#submit-job")
    pg.wait_for_selector("#err-bits:has-text('not supported')", timeout=30_000)
    shot(pg, "05-validation-error")


def test_cancel_a_running_job(page, dash):
    with dash.client() as c:
        minilm = c.register_model("builtin:minilm-l6")
        job = c.submit(minilm.id, {"avg_bits": 3.3})
    pg = page
    pg.goto(f"{dash.url}/#/jobs/{job.id}")
    pg.wait_for_selector(".badge.running", timeout=120_000)
    pg.wait_for_selector("#cancel")
    shot(pg, "06-job-before-cancel")
    pg.click("#cancel")
    pg.wait_for_selector(".badge.cancelled", timeout=60_000)
    assert pg.query_selector("#cancel") is None
    shot(pg, "07-job-cancelled")


def _photos_zip(path: Path) -> Path:
    import io
    import zipfile

    from PIL import Image
    with zipfile.ZipFile(path, "w") as z:
        for cls in ("zero", "one"):
            for i in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (60 * i, 20, 200)).save(buf, "PNG")
                z.writestr(f"photos/{cls}/{i}.png", buf.getvalue())
    return path


def test_upload_data_fills_the_calibration_source_and_a_job_uses_it(page, dash, tmp_path):
    with dash.client() as c:
        digits = c.register_model("builtin:digits-cnn")
    pg = page
    pg.goto(dash.url + "/#/submit")
    pg.wait_for_selector("#job-model option", state="attached")
    pg.select_option("#job-model", digits.id)
    # a refused upload: the message sits next to the file input, nothing is filled in
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"caf\xe9")
    pg.set_input_files("input[name=datafile]", str(bad))
    pg.click("#upload-data")
    pg.wait_for_selector("#err-datafile:has-text('not UTF-8')", timeout=30_000)
    assert pg.input_value("input[name=calib]") == ""
    pg.set_input_files("input[name=datafile]", str(_photos_zip(tmp_path / "photos.zip")))
    pg.click("#upload-data")
    pg.wait_for_selector("#data-ok:has-text('uploaded photos.zip')", timeout=30_000)
    assert "images, 6 samples, 2 classes (one, zero)" in pg.inner_text("#data-ok")
    assert pg.inner_text("#err-datafile") == ""
    source = pg.input_value("input[name=calib]")
    assert source.startswith("upload:") and len(source) == 7 + 64
    pg.fill("input[name=imgmean]", "0.5,0.5")  # two values: refused in the page, next to the field
    pg.click("#submit-job")
    pg.wait_for_selector("#err-imgmean:has-text('1 or 3')", timeout=10_000)
    pg.fill("input[name=imgsize]", "8")
    pg.fill("input[name=imgmean]", "0.5")
    pg.fill("input[name=imgstd]", "0.25")
    pg.check("input[name=foldbn]")
    pg.fill("textarea[name=budgets]", "avg_bits=4")
    shot(pg, "06b-submit-with-data")
    pg.click("#submit-job")
    pg.wait_for_url("**/#/jobs/*", timeout=30_000)
    job_id = pg.url.rsplit("/", 1)[-1]
    with dash.client() as c:
        req = c.get(job_id).request
        assert req.calibration.source == source and req.image_size == 8 and req.fold_batchnorm
        assert (req.image_mean, req.image_std) == ([0.5], [0.25])
        try:
            c.cancel(job_id)  # this test is about the form, not the work
        except Exception:
            pass


def test_five_hundred_jobs_page_through_and_banner_when_server_stops(page, dash, browser):
    with dash.client() as c:
        digits = c.register_model("builtin:digits-cnn")
        # cheap jobs that are cancelled while queued: this test is about the table, not the work
        ids = [c.submit(digits.id, {"avg_bits": 3.0 + i * 1e-3}, proxy="orthogonality", solver="lp", refine=False).id
               for i in range(500)]
        for jid in ids:
            try:
                c.cancel(jid)
            except Exception:
                pass
        total = 0
        cursor = None
        while True:
            pg_ = c.list(cursor=cursor, limit=500)
            total += len(pg_.items)
            cursor = pg_.next_cursor
            if not cursor:
                break
    pg = page
    pg.goto(dash.url + "/#/jobs")
    pg.wait_for_function("() => document.querySelectorAll('#jobs tbody tr[data-job]').length === 50")
    shot(pg, "08-jobs-500")
    rows = 0
    for n in range(1, 30):
        rows += len(pg.query_selector_all("#jobs tbody tr[data-job]"))
        if pg.is_disabled("#older"):
            break
        first = pg.get_attribute("#jobs tbody tr[data-job] >> nth=0", "data-job")
        pg.click("#older")
        pg.wait_for_function(f"() => document.querySelector('#jobs tbody tr[data-job]')?.dataset.job !== '{first}'")
        assert pg.inner_text("#pageno") == f"page {n + 1}"
    assert rows == total >= 500
    pg.select_option("#f-status", "cancelled")
    pg.wait_for_function("() => [...document.querySelectorAll('#jobs .badge')].every(b => b.textContent === 'cancelled')")

    dash.stop()
    pg.wait_for_selector("#banner:not([hidden])", timeout=30_000)
    assert "unreachable" in pg.inner_text("#banner").lower()
    shot(pg, "09-server-down-banner")
