#!/usr/bin/env python3
"""N workers behind vllm-router, end to end: streamed chat and completions through the
router equal the same requests sent to a worker directly (temperature 0), the official
`openai` client through the router, four routing policies, a worker killed (SIGKILL) and
restarted during a run, and a worker drained by SIGTERM during a run. Prints one line per
check and a closing count; exits 1 if any check failed.

The `kv_aware` policy routes by the KV events the workers publish (`--kv-events-endpoint`):
requests that share a long prefix must go to the worker that computed it. The events
themselves are decoded here with pyzmq and msgpack, independently of the worker's code: live
from the PUB socket and again through the replay socket.

    python scripts/router_check.py --worker target/debug/worker-cpud --model M.gguf \\
        --router "$(command -v vllm-router)"

Loopback only. Needs `pip install vllm-router==0.1.17 openai pyzmq msgpack` (the venv of
.ci/run has them).
"""

import argparse
import concurrent.futures as futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:
    import openai
    try:
        import httpx2 as httpx  # what openai 3.x depends on
    except ImportError:
        import httpx
except ImportError:
    sys.exit("router_check: the `openai` package (and its httpx) is missing; pip install openai")
try:
    import msgpack
    import zmq
except ImportError:
    sys.exit("router_check: pyzmq and msgpack are missing; pip install pyzmq msgpack")

MODEL = "model"
SYSTEM = ("You are a concise assistant for a travel company. Answer in one short sentence, "
          "without lists, and never ask a question back.")
QUESTIONS = [
    "What is the capital of France?",
    "Name a river in Egypt.",
    "What language is spoken in Brazil?",
    "Which ocean lies west of Portugal?",
    "What is the tallest mountain in Japan?",
    "Name a famous museum in London.",
    "What currency does Switzerland use?",
    "Which city is known for its canals in Italy?",
]
PROMPTS = [
    "The three primary colours are",
    "A good breakfast before a long hike is",
    "The capital of Germany is",
    "Trains are a popular way to travel in Europe because",
    "In winter, the mountains of Norway",
    "The best time to visit Kyoto is",
    "Paris is famous for",
    "A passport is needed to",
]


# What every worker of the check runs with, beside its ports and names.
CHECK_FLAGS = ["--slots", "4", "--threads", "1", "--ctx-size", "1024"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout, proc=None, want=200):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == want:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer {want} within {timeout} s")


class Workers:
    """Worker processes on fixed loopback ports, so a killed one can come back on its ports;
    each publishes KV events on a PUB port and answers replays on another."""

    def __init__(self, binary, model, count, logdir, flags=CHECK_FLAGS, kv_events=True):
        self.binary, self.model, self.logdir = binary, model, logdir
        self.flags, self.kv_events = flags, kv_events
        self.ports = [free_port() for _ in range(count)]
        self.kv_ports = [(free_port(), free_port()) for _ in range(count)]
        self.procs = [None] * count
        for i in range(count):
            self.start(i)
        for i in range(count):
            self.wait_ready(i)

    def url(self, i):
        return f"http://127.0.0.1:{self.ports[i]}"

    def kv_endpoints(self, i):
        """The worker's KV event PUB and replay endpoints, as a subscriber connects to them."""
        return tuple(f"tcp://127.0.0.1:{p}" for p in self.kv_ports[i])

    def start(self, i):
        log = open(os.path.join(self.logdir, f"worker{i}.log"), "ab")
        cmd = [self.binary, "serve", "--model", self.model, "--port", str(self.ports[i]),
               "--model-name", MODEL, "--worker-id", f"worker-{i}", *self.flags]
        if self.kv_events:
            events, replay = self.kv_endpoints(i)
            cmd += ["--kv-events-endpoint", events, "--kv-events-replay-endpoint", replay]
        self.procs[i] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)

    def wait_ready(self, i):
        wait_http(self.url(i) + "/health", 120, self.procs[i])

    def signal(self, i, sig):
        self.procs[i].send_signal(sig)

    def requests_served(self, i):
        text = httpx.get(self.url(i) + "/metrics", timeout=5).text
        total = 0
        for line in text.splitlines():
            if line.startswith("worker_requests_total{") and 'outcome="ok"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def gauge(self, i, name):
        text = httpx.get(self.url(i) + "/metrics", timeout=5).text
        return next(float(l.split()[1]) for l in text.splitlines() if l.startswith(name + " "))

    def cache_hits(self, i):
        """Prompt tokens served from the worker's prefix cache so far."""
        text = httpx.get(self.url(i) + "/metrics", timeout=5).text
        return next(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines()
                    if l.startswith("vllm:prefix_cache_hits_total"))

    def stop(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


class Router:
    def __init__(self, binary, urls, policy, logdir, extra=()):
        self.port = free_port()
        log = open(os.path.join(logdir, f"router-{policy}.log"), "ab")
        cmd = [binary, "--host", "127.0.0.1", "--port", str(self.port),
               "--prometheus-port", str(free_port()), "--policy", policy,
               "--worker-urls", *urls,
               "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
               "--worker-startup-timeout-secs", "60", "--log-level", "warning", *extra]
        # start_new_session: the launcher starts the router as a child; kill the group.
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/v1/models", 60, self.proc)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def request_bodies(max_tokens):
    """Chat turns sharing one system prompt and completions: the cache-aware policy's case."""
    chats = [("/v1/chat/completions",
              {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
               "messages": [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": q}]}) for q in QUESTIONS]
    completions = [("/v1/completions",
                    {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "prompt": p})
                   for p in PROMPTS]
    return chats + completions


def stream(base, path, body, timeout=120):
    """Sends `body` with stream: true; returns (text, finish_reasons, done, error)."""
    body = dict(body, stream=True)
    text, finishes, done, error = [], [], False, None
    try:
        with httpx.stream("POST", base + path, json=body, timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                return "", [], False, f"HTTP {r.status_code}: {r.text[:200]}"
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"].get("code") or chunk["error"].get("message")
                    continue
                for c in chunk.get("choices", []):
                    if "delta" in c:
                        text.append(c["delta"].get("content") or "")
                    else:
                        text.append(c.get("text") or "")
                    if c.get("finish_reason") is not None:
                        finishes.append(c["finish_reason"])
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        error = error or f"{type(e).__name__}: {e}"
    return "".join(text), finishes, done, error


def complete(result):
    """A stream that ended properly: exactly one terminal chunk, then [DONE], no error."""
    _, finishes, done, error = result
    return error is None and done and len(finishes) == 1


def run_batch(base, bodies, concurrency):
    with futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda pb: stream(base, *pb), bodies))


# --- kv_aware: KV events from the workers, decoded here with pyzmq and msgpack ---------------

KV_BLOCK = 16  # positions per KV block: the worker's, and the router's --kv-event-block-size


def kv_system_prompt(group):
    """A system prompt of well over ten KV blocks, different for every group."""
    return " ".join(f"Fact {group}.{i}: depot {group} ships crate {i} to port "
                    f"{(i * 7 + group) % 11} on day {(i * 3 + group) % 5}." for i in range(14))


def kv_bodies(group, max_tokens):
    """Chat requests sharing group `group`'s system prompt, each with its own question."""
    return [("/v1/chat/completions",
             {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
              "messages": [{"role": "system", "content": kv_system_prompt(group)},
                           {"role": "user", "content": q}]}) for q in QUESTIONS[:4]]


def render(base, body):
    """The token ids the worker runs for a chat body (vLLM's render route)."""
    r = httpx.post(base + "/v1/chat/completions/render", json=body, timeout=30)
    r.raise_for_status()
    return r.json()["token_ids"]


def decode_batch(payload):
    """Decodes one payload as vllm-router does; raises on anything outside vLLM's format."""
    batch = msgpack.unpackb(payload, raw=False)
    assert isinstance(batch, list) and len(batch) == 3, batch
    ts, events, rank = batch
    assert isinstance(ts, float) and ts > 1.6e9 and rank == 0, batch
    fields = {"BlockStored": ["type", "block_hashes", "parent_block_hash", "token_ids",
                              "block_size", "lora_id", "medium", "lora_name"],
              "BlockRemoved": ["type", "block_hashes", "medium"],
              "AllBlocksCleared": ["type"]}
    for e in events:
        assert list(e) == fields[e["type"]], e  # the tag first, as msgspec writes it
        if e["type"] == "BlockStored":
            assert e["block_size"] == KV_BLOCK and e["medium"] == "GPU", e
            assert len(e["token_ids"]) == KV_BLOCK * len(e["block_hashes"]) > 0, e
            assert e["lora_id"] is None and e["lora_name"] is None, e
    return events


def replay(endpoint, start):
    """Every kept (seq, payload) from `start` on, through the replay socket, as the router
    asks for them: a DEALER sends [empty, start]; replies are [empty, topic, seq, payload]."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    got = []
    try:
        while dealer.poll(10_000):
            frames = dealer.recv_multipart()
            assert len(frames) == 4 and frames[0] == b"" and frames[1] == b"", frames
            seq = int.from_bytes(frames[2], "big", signed=True)
            if seq == -1:
                return got
            got.append((seq, frames[3]))
        raise AssertionError("the replay did not end")
    finally:
        dealer.close(0)


def reported_blocks(batches):
    """(parent, tokens) -> hash of every stored block, following the chains of the events."""
    blocks = {}
    for _, payload in batches:
        for e in decode_batch(payload):
            if e["type"] == "BlockStored":
                parent = e["parent_block_hash"]
                for i, h in enumerate(e["block_hashes"]):
                    blocks[(parent, tuple(e["token_ids"][i * KV_BLOCK:(i + 1) * KV_BLOCK]))] = h
                    parent = h
    return blocks


def reported_prefix(blocks, ids):
    """How many leading full blocks of `ids` the reported chains hold."""
    parent, n = None, 0
    for i in range(len(ids) // KV_BLOCK):
        h = blocks.get((parent, tuple(ids[i * KV_BLOCK:(i + 1) * KV_BLOCK])))
        if h is None:
            break
        parent, n = h, n + 1
    return n


def kv_aware_checks(args, workers, check, logdir):
    """Worker g computes group g's system prompt; the kv_aware router must then send the
    group's other questions to worker g, which answers them from its cache."""
    t0 = time.time()
    count = args.workers
    urls = [workers.url(i) for i in range(count)]
    ctx = zmq.Context.instance()
    subs = []
    for i in range(count):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(workers.kv_endpoints(i)[0])
        subs.append(sub)
    extra = ["--kv-event-block-size", str(KV_BLOCK), "--kv-event-model", MODEL]
    for i in range(count):
        events, replay_ep = workers.kv_endpoints(i)
        extra += ["--kv-event-source", f"{urls[i]}={events}",
                  "--kv-event-replay-source", f"{urls[i]}={replay_ep}"]
    router = Router(args.router, urls, "kv_aware", logdir, extra)
    try:
        groups = [kv_bodies(g, args.max_tokens) for g in range(count)]
        for g in range(count):
            path, body = groups[g][0]
            assert complete(stream(urls[g], path, body)), "warming request failed"
        # One more request on each worker: a subscriber that missed the first batches (the
        # router connecting late) sees the sequence number jump and asks for a replay.
        for g in range(count):
            httpx.post(urls[g] + "/v1/completions", timeout=60, json={
                "model": MODEL, "prompt": f"Worker {g} flushes its events. " * 4,
                "max_tokens": 1}).raise_for_status()

        # The events, decoded independently: live and replayed, the same bytes; the chains
        # hold every full block of the prompt the worker rendered.
        for g in range(count):
            live = []
            while subs[g].poll(300):
                topic, seq, payload = subs[g].recv_multipart()
                assert topic == b"", topic
                live.append((int.from_bytes(seq, "big"), payload))
            kept = replay(workers.kv_endpoints(g)[1], 0)
            seqs = [s for s, _ in kept]
            ids = render(urls[g], groups[g][0][1])
            blocks = reported_blocks(kept)
            held = reported_prefix(blocks, ids)
            check(f"kv events of worker {g} decoded with pyzmq and msgpack",
                  seqs == list(range(len(kept))) and live and set(live) <= set(kept)
                  and held == len(ids) // KV_BLOCK,
                  f"{len(kept)} batches numbered from 0 ({len(live)} live ones equal to "
                  f"their replay), {len(blocks)} blocks; the prompt's {len(ids)} tokens: "
                  f"{held} of {len(ids) // KV_BLOCK} full blocks reported")

        routed, served_by, hits, shared = [], [], [], []
        for g in range(count):
            first = render(urls[g], groups[g][0][1])
            for path, body in groups[g][1:]:
                before = [(workers.requests_served(i), workers.cache_hits(i))
                          for i in range(count)]
                routed.append(stream(router.url, path, body))
                after = [(workers.requests_served(i), workers.cache_hits(i))
                         for i in range(count)]
                who = [i for i in range(count) if after[i][0] > before[i][0]]
                served_by.append((g, who))
                hits.append(sum(a[1] - b[1] for a, b in zip(after, before)))
                ids = render(urls[g], body)
                common = next((k for k, (a, b) in enumerate(zip(first, ids)) if a != b),
                              min(len(first), len(ids)))
                shared.append(common // KV_BLOCK * KV_BLOCK)
        right = sum(who == [g] for g, who in served_by)
        check("kv_aware: requests sharing a prefix go to the worker that computed it",
              right == len(served_by) and all(h >= s > 100 for h, s in zip(hits, shared)),
              f"{right} of {len(served_by)} on the worker holding their system prompt; "
              f"cache hits {hits} prompt tokens (shared prefixes {shared})")
        reference = [stream(urls[g], path, body) for g in range(count)
                     for path, body in groups[g][1:]]
        same = sum(complete(r) and r[0] == ref[0] for r, ref in zip(routed, reference))
        check("kv_aware: streams complete with one terminal chunk, equal to direct requests",
              same == len(routed), f"{same} of {len(routed)}; the kv_aware checks took "
              f"{time.time() - t0:.1f} s")
    finally:
        router.stop()
        for sub in subs:
            sub.close(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", required=True, help="worker-cpud binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--router", required=True, help="the vllm-router launcher")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=12)
    args = ap.parse_args()
    logdir = tempfile.mkdtemp(prefix="router_check.")
    results = []

    def check(name, ok, detail):
        results.append(bool(ok))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    t_start = time.time()
    workers = Workers(args.worker, args.model, args.workers, logdir)
    urls = [workers.url(i) for i in range(args.workers)]
    router = None
    try:
        kv_aware_checks(args, workers, check, logdir)
        distinct = request_bodies(args.max_tokens)
        # The reference: each distinct request sent to one worker directly.
        reference = {}
        for path, body in distinct:
            text, finishes, done, error = stream(urls[0], path, body)
            assert complete((text, finishes, done, error)), (path, error)
            reference[json.dumps(body, sort_keys=True)] = text
        bodies = [distinct[i % len(distinct)] for i in range(args.requests)]

        # cache_aware last: the openai client checks below run behind it.
        for policy, count in [("round_robin", 16), ("power_of_two", 16),
                              ("cache_aware", args.requests)]:
            router = Router(args.router, urls, policy, logdir)
            before = [workers.requests_served(i) for i in range(args.workers)]
            t0 = time.time()
            got = run_batch(router.url, bodies[:count], args.concurrency)
            elapsed = time.time() - t0
            after = [workers.requests_served(i) for i in range(args.workers)]
            done = sum(complete(r) for r in got)
            same = sum(complete(r) and r[0] == reference[json.dumps(b, sort_keys=True)]
                       for r, (_, b) in zip(got, bodies))
            spread = [a - b for a, b in zip(after, before)]
            check(f"{policy}: {count} streams at concurrency {args.concurrency}",
                  done == count and same == count and sum(spread) == count,
                  f"{done} complete with one terminal chunk, {same} equal to the direct text, "
                  f"per worker {spread}, {elapsed:.1f} s")
            if policy != "cache_aware":
                router.stop()
                router = None

        # The official client through the (cache-aware) router.
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        path, body = distinct[0]
        want = reference[json.dumps(body, sort_keys=True)]
        r = client.chat.completions.create(model=MODEL, messages=body["messages"],
                                           max_tokens=args.max_tokens, temperature=0)
        check("openai chat through the router", r.choices[0].message.content == want,
              f"{r.choices[0].message.content!r}, finish {r.choices[0].finish_reason}")
        parts = client.chat.completions.create(model=MODEL, messages=body["messages"],
                                               max_tokens=args.max_tokens, temperature=0,
                                               stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        check("openai chat streamed through the router", text == want, repr(text))
        path, body = distinct[len(QUESTIONS)]
        want = reference[json.dumps(body, sort_keys=True)]
        r = client.completions.create(model=MODEL, prompt=body["prompt"],
                                      max_tokens=args.max_tokens, temperature=0)
        check("openai completion through the router", r.choices[0].text == want,
              repr(r.choices[0].text))

        # The faults run behind round_robin: every worker has its share of the streams in
        # flight when it is killed, and a restarted one gets work as soon as the router sees
        # it healthy (cache_aware keeps sending these prompts to the workers whose trees
        # hold them, so whether the restarted worker gets one depends on where they went).
        router.stop()
        router = Router(args.router, urls, "round_robin", logdir)

        # SIGKILL one worker while streams run: each stream completes with the direct text or
        # fails visibly; requests sent after it are served by the others; it comes back.
        long_bodies = [(p, dict(b, max_tokens=48)) for p, b in bodies[:args.concurrency]]
        long_reference = [r[0] for r in run_batch(urls[0], long_bodies, 4)]

        def intact(got):
            """Streams that completed, and whether each of those has the direct text."""
            done = [r for r in got if complete(r)]
            return len(done), all(r[0] == want for r, want in zip(got, long_reference)
                                  if complete(r))

        with futures.ThreadPoolExecutor(args.concurrency) as pool:
            running = [pool.submit(stream, router.url, p, b) for p, b in long_bodies]
            time.sleep(1.0)
            workers.signal(args.workers - 1, signal.SIGKILL)
            got = [f.result() for f in running]
        done, equal = intact(got)
        visible = sum(not complete(r) and (r[3] is not None or not r[2] or not r[1])
                      for r in got)
        check("SIGKILL: in-flight streams complete (with the direct text) or fail visibly",
              done + visible == len(got) and done >= len(got) // 2 and equal,
              f"{done} complete, {visible} failed visibly, of {len(got)}; "
              f"completed text {'equal' if equal else 'DIFFERENT'}")
        time.sleep(2.5)  # the router's health check (1 s interval) marks the worker down
        got = run_batch(router.url, bodies[:16], args.concurrency)
        same = sum(complete(r) and r[0] == reference[json.dumps(b, sort_keys=True)]
                   for r, (_, b) in zip(got, bodies))
        check("SIGKILL: later requests go to the live workers", same == 16,
              f"{same} of 16 complete and equal")
        workers.start(args.workers - 1)
        workers.wait_ready(args.workers - 1)
        rejoined, waited = False, time.time()
        while not rejoined and time.time() - waited < 20:
            run_batch(router.url, bodies[:8], 8)
            rejoined = workers.requests_served(args.workers - 1) > 0
        check("SIGKILL: the restarted worker rejoins", rejoined,
              f"served requests {time.time() - waited:.1f} s after it was ready")

        # SIGTERM one worker while streams run: it drains; no stream is cut without an error.
        with futures.ThreadPoolExecutor(args.concurrency) as pool:
            running = [pool.submit(stream, router.url, p, b) for p, b in long_bodies]
            time.sleep(1.0)
            victim = 0
            busy = workers.gauge(victim, "worker_slots_busy")
            workers.signal(victim, signal.SIGTERM)
            got = [f.result() for f in running]
        exit_code = workers.procs[victim].wait(timeout=10)
        truncated = sum(not complete(r) and r[3] is None for r in got)
        done, equal = intact(got)
        check("SIGTERM: every stream completes or ends with an error, exit 0",
              truncated == 0 and exit_code == 0 and equal and busy > 0,
              f"{busy:.0f} streams open on it at SIGTERM; {done} complete, "
              f"{len(got) - done - truncated} ended with an error, "
              f"{truncated} cut silently, exit {exit_code}")
        time.sleep(2.5)
        got = run_batch(router.url, bodies[:16], args.concurrency)
        same = sum(complete(r) and r[0] == reference[json.dumps(b, sort_keys=True)]
                   for r, (_, b) in zip(got, bodies))
        check("SIGTERM: later requests go to the live workers", same == 16,
              f"{same} of 16 complete and equal")
    finally:
        if router is not None:
            router.stop()
        workers.stop()
    passed = sum(results)
    print(f"{passed}/{len(results)} checks passed in {time.time() - t_start:.0f} s "
          f"(logs in {logdir})")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
