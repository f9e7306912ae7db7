#!/usr/bin/env python3
"""Aggregate throughput through vllm-router with 1, 2 and 3 workers. For each worker count it
starts that many `worker-cpud serve` processes and the router in front of them, sends a
fixed number of completion requests at a fixed concurrency (temperature 0, `ignore_eos`, so
each generates exactly --max-tokens tokens), and prints the completion tokens per second of
wall time, requests per second and the mean request latency.

A benchmark, not a test: run it on a quiet machine (CI does not run it). On one host the
workers share its cores and memory bandwidth (--threads-per-worker defaults to the cores
split between them), so it shows what the router and the split cost, not how N machines
scale.

    python scripts/router_bench.py --worker target/release/worker-cpud --model M.gguf \\
        --router "$(command -v vllm-router)" [--workers 1,2,3] [--json]

Loopback only. Needs `pip install vllm-router==0.1.17 openai` (the venv of .ci/run).
"""

import argparse
import concurrent.futures as futures
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from router_check import MODEL, PROMPTS, Router, Workers, httpx  # noqa: E402


def complete_one(base, prompt, max_tokens):
    """One non-streamed completion; returns (completion tokens, seconds)."""
    t0 = time.time()
    r = httpx.post(base + "/v1/completions", timeout=600, json={
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"], time.time() - t0


def measure(args, count, logdir):
    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // count)
    flags = ["--slots", str(args.slots), "--threads", str(threads), "--ctx-size", "1024"]
    workers = Workers(args.worker, args.model, count, logdir, flags=flags, kv_events=False)
    router = None
    try:
        for i in range(count):  # page the weights in before timing
            complete_one(workers.url(i), PROMPTS[0], 4)
        router = Router(args.router, [workers.url(i) for i in range(count)], args.policy,
                        logdir)
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} (request {i})" for i in range(args.requests)]
        t0 = time.time()
        with futures.ThreadPoolExecutor(args.concurrency) as pool:
            done = list(pool.map(lambda p: complete_one(router.url, p, args.max_tokens),
                                 prompts))
        wall = time.time() - t0
    finally:
        if router is not None:
            router.stop()
        workers.stop()
    tokens = sum(t for t, _ in done)
    return {"workers": count, "threads_per_worker": threads, "policy": args.policy,
            "requests": args.requests, "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "wall_s": round(wall, 3),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "requests_per_s": round(len(done) / wall, 3),
            "mean_latency_s": round(sum(s for _, s in done) / len(done), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", required=True, help="worker-cpud binary (a release build)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--router", required=True, help="the vllm-router launcher")
    ap.add_argument("--workers", default="1,2,3", help="worker counts to measure")
    ap.add_argument("--policy", default="round_robin")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=4, help="--slots of each worker")
    ap.add_argument("--threads-per-worker", type=int, default=0,
                    help="--threads of each worker (default: the cores split between them)")
    ap.add_argument("--json", action="store_true", help="print one JSON line per count")
    args = ap.parse_args()
    logdir = tempfile.mkdtemp(prefix="router_bench.")
    counts = [int(c) for c in args.workers.split(",")]
    if not args.json:
        print(f"{'workers':>7} {'threads':>7} {'wall s':>8} {'tokens':>7} {'tokens/s':>9} "
              f"{'req/s':>7} {'latency s':>9}", flush=True)
    for count in counts:
        row = measure(args, count, logdir)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['workers']:>7} {row['threads_per_worker']:>7} {row['wall_s']:>8.2f} "
                  f"{row['completion_tokens']:>7} {row['tokens_per_s']:>9.2f} "
                  f"{row['requests_per_s']:>7.3f} {row['mean_latency_s']:>9.3f}", flush=True)
    print(f"(logs in {logdir}; {args.requests} requests of {args.max_tokens} tokens at "
          f"concurrency {args.concurrency}, policy {args.policy})", file=sys.stderr)


if __name__ == "__main__":
    main()
