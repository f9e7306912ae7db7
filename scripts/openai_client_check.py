#!/usr/bin/env python3
"""Talks to a running worker with the official `openai` Python client (PyPI), streaming and
not, chat and completions, and prints one line per check and a closing count.

Either point it at a worker that runs:
    python scripts/openai_client_check.py --base-url http://127.0.0.1:8080/v1
or let it start one (port 0, 127.0.0.1) and stop it afterwards:
    python scripts/openai_client_check.py --worker target/debug/worker-cpud --model M.gguf

Needs `pip install openai` (a venv under ~/.cache/llama-orch-worker/ works).
"""

import argparse
import subprocess
import sys
import time

try:
    import openai
except ImportError:
    sys.exit("openai_client_check: the `openai` package is missing; pip install openai")


def start_worker(binary, model, api_key):
    cmd = [binary, "serve", "--model", model, "--port", "0", "--slots", "2",
           "--ctx-size", "1024", "--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on "):
            return proc, line.split(" ", 2)[2].strip() + "/v1"
    proc.kill()
    sys.exit("openai_client_check: the worker did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url")
    ap.add_argument("--worker", help="worker binary to start (with --model)")
    ap.add_argument("--model")
    ap.add_argument("--api-key", default="check-key")
    args = ap.parse_args()
    proc = None
    if args.base_url:
        base_url = args.base_url
    elif args.worker and args.model:
        proc, base_url = start_worker(args.worker, args.model, args.api_key)
    else:
        ap.error("give --base-url, or --worker and --model")
    client = openai.OpenAI(base_url=base_url, api_key=args.api_key, max_retries=0)
    results = []

    def check(name, fn):
        try:
            detail = fn()
            results.append(True)
            print(f"PASS {name}: {detail}")
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            results.append(False)
            print(f"FAIL {name}: {type(e).__name__}: {e}")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    model_id = {}

    def models():
        ids = [m.id for m in client.models.list().data]
        assert len(ids) == 1, ids
        model_id["id"] = ids[0]
        return ids[0]

    def chat():
        r = client.chat.completions.create(model=model_id.get("id", "m"), messages=messages,
                                           max_tokens=16, temperature=0)
        c = r.choices[0]
        assert c.message.role == "assistant" and c.message.content, r
        assert c.finish_reason in ("stop", "length"), c.finish_reason
        u = r.usage
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens > 0, u
        model_id["chat"] = c.message.content
        return f"{c.message.content!r} finish={c.finish_reason} usage={u.prompt_tokens}+{u.completion_tokens}"

    def chat_stream():
        stream = client.chat.completions.create(
            model="m", messages=messages, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True})
        text, finish, usage, n = "", None, None, 0
        for chunk in stream:
            n += 1
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                text += ch.delta.content or ""
                finish = ch.finish_reason or finish
        assert text == model_id["chat"], (text, model_id["chat"])
        assert finish in ("stop", "length") and usage is not None
        return f"{n} chunks, same text, finish={finish}, usage={usage.completion_tokens}"

    def chat_logprobs():
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=4,
                                           temperature=0, logprobs=True, top_logprobs=2)
        lp = r.choices[0].logprobs.content
        assert len(lp) == 4 and all(len(t.top_logprobs) == 2 for t in lp), lp
        return " ".join(f"{t.token!r}:{t.logprob:.2f}" for t in lp)

    def completion():
        r = client.completions.create(model="m", prompt="The capital of France is",
                                      max_tokens=8, temperature=0)
        t = r.choices[0].text
        assert t and r.usage.completion_tokens == 8, r
        model_id["completion"] = t
        return f"{t!r} finish={r.choices[0].finish_reason}"

    def completion_stream():
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="m", prompt="The capital of France is", max_tokens=8, temperature=0,
            stream=True) if c.choices)
        assert text == model_id["completion"], (text, model_id["completion"])
        return "same text streamed"

    def seeded():
        kw = dict(model="m", prompt="Once upon a time", max_tokens=8, temperature=0.9, seed=42)
        a = client.completions.create(**kw).choices[0].text
        b = client.completions.create(**kw).choices[0].text
        assert a == b, (a, b)
        return f"seed 42 twice: {a!r}"

    def rejects_n2():
        try:
            client.chat.completions.create(model="m", messages=messages, n=2)
        except openai.BadRequestError as e:
            return f"400 {e.body.get('message') if isinstance(e.body, dict) else e.body}"
        raise AssertionError("n=2 was accepted")

    def rejects_bad_key():
        bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
        try:
            bad.models.list()
        except openai.AuthenticationError:
            return "401"
        raise AssertionError("a wrong key was accepted")

    try:
        for name, fn in [("models.list", models), ("chat", chat), ("chat stream", chat_stream),
                         ("chat logprobs", chat_logprobs), ("completions", completion),
                         ("completions stream", completion_stream), ("seed", seeded),
                         ("n=2 rejected", rejects_n2)]:
            check(name, fn)
        if proc is not None:
            check("wrong api key rejected", rejects_bad_key)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
