#!/usr/bin/env python3
"""Checks docs/deploy/k8s.yaml against the programs it runs, so the manifest cannot rot:
every worker flag is one `worker-cpud serve --help` lists, every router flag one
`vllm-router --help` lists, the probes hit /health on the worker's port, the router
discovers the worker pods by their labels and port, the drain fits in the termination
grace period, and the worker's binary path is the Dockerfile's. Then it starts the worker
with the manifest's own arguments (model and port swapped for local ones) and checks
/health. Prints one line per check; exits 1 if any failed.

    python scripts/deploy_check.py --worker target/debug/worker-cpud \\
        --router "$(command -v vllm-router)" --model M.gguf

Needs PyYAML (`pip install pyyaml`; the venv of .ci/run has it).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def help_flags(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", out.stdout + out.stderr))


def flag_values(args):
    """`--name=value` and bare `--name` (as True), in order; other arguments under ''."""
    values = {}
    for a in args:
        if a.startswith("--"):
            name, _, value = a.partition("=")
            values[name] = value if value else True
        else:
            values.setdefault("", []).append(a)
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", required=True)
    ap.add_argument("--router", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", default=os.path.join(ROOT, "docs/deploy/k8s.yaml"))
    args = ap.parse_args()
    results = []

    def check(name, ok, detail=""):
        results.append(bool(ok))
        print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    with open(args.manifest) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    worker_pod = deployments["llama-worker"]["spec"]["template"]
    router_pod = deployments["vllm-router"]["spec"]["template"]
    worker = worker_pod["spec"]["containers"][0]
    router = router_pod["spec"]["containers"][0]

    worker_args = flag_values(worker["args"])
    check("the worker runs `serve`", worker_args.get("") == ["serve"], str(worker_args.get("")))
    known = help_flags([args.worker, "serve", "--help"])
    unknown = [f for f in worker_args if f and f not in known]
    check("every worker flag is a `worker-cpud serve` flag", not unknown, f"unknown {unknown}")
    port = int(worker_args["--port"])
    named = {p["name"]: p["containerPort"] for p in worker["ports"]}
    check("the container port is the worker's --port", named.get("http") == port, str(named))
    for probe in ["startupProbe", "readinessProbe"]:
        get = worker[probe]["httpGet"]
        check(f"the worker's {probe} asks /health on its port",
              get["path"] == "/health" and named.get(get["port"], get["port"]) == port, str(get))
    grace = worker_pod["spec"]["terminationGracePeriodSeconds"]
    drain = float(worker_args.get("--drain-timeout-sec", 3))
    # The worker exits within drain + 2 s (ending streams, closing connections).
    check("the drain fits in the termination grace period", drain + 2 <= grace,
          f"drain {drain} s, grace {grace} s")
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        dockerfile = f.read()
    check("the worker's binary is the Dockerfile's", worker["command"][0] in dockerfile,
          worker["command"][0])

    router_args = flag_values(router["args"])
    known = help_flags([args.router, "--help"])
    unknown = [f for f in router_args if f and f not in known]
    check("every router flag is a `vllm-router` flag", not unknown, f"unknown {unknown}")
    key, _, value = router_args["--selector"].partition("=")
    labels = worker_pod["metadata"]["labels"]
    check("the router's selector matches the worker pods", labels.get(key) == value,
          f"{key}={value} vs {labels}")
    check("the router discovers the workers on their port",
          int(router_args["--service-discovery-port"]) == port)
    check("the router health-checks /health",
          router_args.get("--health-check-endpoint", "/health") == "/health")
    role = next(d for d in docs if d["kind"] == "Role")
    verbs = {v for r in role["rules"] if "pods" in r["resources"] for v in r["verbs"]}
    check("the router may watch pods", {"get", "list", "watch"} <= verbs, str(sorted(verbs)))

    # The manifest's own worker arguments, with a local model and a free loopback port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    local = [a for a in worker["args"]
             if not a.startswith(("--model=", "--host=", "--port="))]
    local += [f"--model={args.model}", "--host=127.0.0.1", f"--port={free}"]
    proc = subprocess.Popen([args.worker, *local], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    health, deadline = None, time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free}/health", timeout=2) as r:
                    health = json.load(r)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    check("the worker starts with the manifest's arguments and /health says ok",
          health is not None and health.get("status") == "ok",
          f"model {health and health.get('model')}")
    passed = sum(results)
    print(f"{passed}/{len(results)} deployment checks passed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
