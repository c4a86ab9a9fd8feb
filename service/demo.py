"""``make run``: start a server on the embedded defaults (SQLite under ./var, a local Ray),
register the builtin MiniLM, submit the demo job and follow its progress (also visible on the
dashboard and at /v1/jobs while it runs), then write policy.json.

    python -m service.demo [--port 8000] [--keep-serving]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from service.launcher import ServerProcess, ServerStartError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=int(os.environ.get("BITPLAN_PORT", 8000)))
    ap.add_argument("--budget", type=float, default=3.3)
    ap.add_argument("--out", type=Path, default=Path("policy.json"))
    ap.add_argument("--keep-serving", action="store_true", help="leave the server running after the job")
    args = ap.parse_args(argv)

    from service.cli_remote import _follow
    from service.client import Client

    url = f"http://127.0.0.1:{args.port}"
    try:
        httpx.get(f"{url}/healthz", timeout=1)
        print(f"bitplan: something already listens on {url}; stop it or pass --port", file=sys.stderr)
        return 1
    except httpx.TransportError:
        pass
    server = ServerProcess(args.port, Path("var/server.log"))
    try:
        print(f"starting the server at {url} (log: var/server.log) …", flush=True)
        try:
            server.start(timeout=180)
        except ServerStartError as e:
            print(f"bitplan: {e}", file=sys.stderr)
            return 1
        with Client(url, os.environ.get("BITPLAN_API_TOKEN"), timeout=600) as c:
            model = c.register_model("builtin:minilm-l6")
            print(f"registered {model.ref}: {model.n_layers} layers, {model.n_weights:,} weights, id {model.id[:16]}…")
            job = c.submit(model.id, {"avg_bits": args.budget}, formats={"bits": [2, 3, 4, 8], "group_size": 64})
            print(f"job {job.id}: watch it on the dashboard {url}/#/jobs/{job.id}", flush=True)
            job = _follow(c, job.id)
            policy = c.policy(job.policy_ids[0])
            args.out.write_text(json.dumps(policy, indent=2))
            m = policy["measured"]
            cost = m.get("uniform_avg_bits", {})
            uni = ", ".join(f"uniform {b}{'-bit' if b.isdigit() else ''} {v:.4g}"
                            for b, v in sorted(m["uniform"].items(), key=lambda x: cost.get(x[0], 0.0)))
            print(f"policy {job.policy_ids[0]} → {args.out}: avg_bits {policy['cost']['avg_bits']:.4f} "
                  f"(budget {args.budget}), {m['metric']} {m['value']:.4g} (float {m['float']:.4g}; {uni})")
            print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in job.timings.items()))
        if args.keep_serving:
            print(f"server still running at {url} — Ctrl-C to stop", flush=True)
            server.wait()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
