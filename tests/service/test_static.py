"""The dashboard's files: the vendored chart library is the npm release it claims to be, and the
page loads nothing from outside the server (it must work offline)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


def test_vendored_chartjs_matches_its_checksum():
    d = STATIC / "vendor" / "chartjs"
    want = (d / "SHA256SUMS").read_text().split()[0]
    assert hashlib.sha256((d / "chart.umd.min.js").read_bytes()).hexdigest() == want
    assert (d / "chart.umd.min.js").read_text()[:40].strip().startswith("/*!") and "MIT" in (d / "LICENSE.md").read_text()


def test_page_loads_only_local_assets():
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith(("/static/", "#", "/docs", "data:")) for r in refs), refs
    modules = sorted((STATIC / "js").glob("*.js"))
    assert '<script type="module" src="/static/js/main.js">' in html and modules
    js = "\n".join(m.read_text() for m in modules)
    assert "http://" not in js and "https://" not in js
    assert "/v1/" in js and "/internal" not in js  # only the public API
