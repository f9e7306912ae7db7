#!/usr/bin/env python3
"""Structured output through the official `openai` Python client: a set of JSON schemas sent
as `response_format: json_schema`, streamed and not, each answer parsed and validated with
the `jsonschema` package; `json_object` answers parsed. Prints one line per check and a
closing count per model; exits non-zero when any check fails.

    python scripts/openai_structured_check.py --worker target/debug/worker-cpud --model M.gguf

With `--llama-server PATH` the same checks run against llama.cpp's `llama-server --jinja` on
the same models instead, for the side-by-side pass counts in the README (exit status 0: the
counts are the result there).

Needs `pip install openai jsonschema` (CI's venv at ~/.cache/llama-orch-worker/openai-venv).
"""

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request

try:
    import jsonschema
    import openai
except ImportError:
    sys.exit("openai_structured_check: pip install openai jsonschema")

from openai_client_check import start_worker

SCHEMAS = {
    "nested_object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "array_min_max": {
        "type": "object",
        "properties": {
            "colors": {"type": "array", "items": {"type": "string", "maxLength": 12},
                       "minItems": 2, "maxItems": 4}
        },
        "required": ["colors"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"mood": {"enum": ["happy", "sad", "angry"]}},
        "required": ["mood"],
        "additionalProperties": False,
    },
    "pattern": {
        "type": "object",
        "properties": {"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}},
        "required": ["phone"],
        "additionalProperties": False,
    },
    "defs_ref": {
        "$defs": {"point": {"type": "object",
                            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    },
    "any_of": {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]}},
        "required": ["value"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {"nickname": {"type": ["string", "null"], "maxLength": 15}},
        "required": ["nickname"],
        "additionalProperties": False,
    },
    "const": {
        "type": "object",
        "properties": {"kind": {"const": "person"}, "age": {"type": "integer"}},
        "required": ["kind", "age"],
        "additionalProperties": False,
    },
    "number_ranges": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "minimum": 10, "maximum": 99},
        },
        "required": ["score", "count"],
        "additionalProperties": False,
    },
    "unicode_string": {
        "type": "object",
        "properties": {"greeting": {"type": "string", "minLength": 1, "maxLength": 20}},
        "required": ["greeting"],
        "additionalProperties": False,
    },
    "top_level_array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 1,
        "maxItems": 5,
    },
}

PROMPTS = {
    "unicode_string": "Say hello in Japanese, as JSON.",
}


def ask(client, name, schema, stream, max_tokens):
    messages = [{"role": "user",
                 "content": PROMPTS.get(name, f"Answer with JSON for the schema '{name}'.")}]
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    kw = dict(model="m", messages=messages, response_format=fmt, max_tokens=max_tokens,
              temperature=0.7, seed=7)
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, reason = "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
    return text, reason


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                       "required": ["zone"], "additionalProperties": False},
    },
}


def tool_call(client, choice, stream, max_tokens, temperature=0.5, seed=11, pieces=None):
    """One request with the two tools; returns (content, [(id, name, arguments)], finish
    reason). Streamed, the content deltas are also appended to `pieces` if given."""
    kw = dict(model="m", tools=[WEATHER, TIME], tool_choice=choice, max_tokens=max_tokens,
              temperature=temperature, seed=seed,
              messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    if not stream:
        c = client.chat.completions.create(**kw).choices[0]
        calls = [(t.id, t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
        return c.message.content, calls, c.finish_reason
    content, calls, reason = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        if d.content and pieces is not None:
            pieces.append(d.content)
        for t in d.tool_calls or []:
            entry = calls.setdefault(t.index, ["", "", ""])
            entry[0] = t.id or entry[0]
            entry[1] += (t.function.name or "") if t.function else ""
            entry[2] += (t.function.arguments or "") if t.function else ""
        reason = chunk.choices[0].finish_reason or reason
    return content, [tuple(calls[i]) for i in sorted(calls)], reason


def check_tools(client, max_tokens):
    """Tool calls with required and named choices, streamed and not; `auto` at a high
    temperature (text or valid calls, never markup); then a second turn with the tool's
    result. Returns (passed, total)."""
    passed = total = 0
    params = {"get_weather": WEATHER["function"]["parameters"],
              "get_time": TIME["function"]["parameters"]}
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, label in (("required", "required"), (named, "named")):
        for stream in (False, True):
            total += 1
            name = f"tool_choice {label} {'streamed' if stream else 'plain'}"
            try:
                content, calls, reason = tool_call(client, choice, stream, max_tokens)
                if reason != "tool_calls" or not calls:
                    raise ValueError(f"finish_reason {reason!r}, {len(calls)} calls")
                if content and "<tool_call>" in content:
                    raise ValueError("markup in content")
                for cid, fname, args in calls:
                    if not cid or fname not in params:
                        raise ValueError(f"bad call {cid!r} {fname!r}")
                    if label == "named" and fname != "get_weather":
                        raise ValueError(f"named choice called {fname}")
                    jsonschema.validate(json.loads(args), params[fname])
                passed += 1
                print(f"PASS {name}: {calls}")
            except Exception as e:  # noqa: BLE001
                print(f"FAIL {name}: {type(e).__name__}: {str(e)[:200]}")
    # `auto`: the model chooses; whatever it chooses must be clean text or valid calls.
    for seed in range(4):
        total += 1
        stream = seed % 2 == 1
        name = f"tool_choice auto seed {seed} {'streamed' if stream else 'plain'}"
        try:
            content, calls, reason = tool_call(client, "auto", stream, min(max_tokens, 64),
                                               temperature=1.0, seed=seed)
            if "<tool_call>" in (content or "") or "</tool_call>" in (content or ""):
                raise ValueError("markup in content")
            if calls and reason != "tool_calls":
                raise ValueError(f"{len(calls)} calls but finish_reason {reason!r}")
            if not calls and reason not in ("stop", "length"):
                raise ValueError(f"finish_reason {reason!r} without calls")
            for cid, fname, args in calls:
                if not cid or fname not in params:
                    raise ValueError(f"bad call {cid!r} {fname!r}")
                jsonschema.validate(json.loads(args), params[fname])
            passed += 1
            print(f"PASS {name}: {len(calls)} calls, content {(content or '')[:60]!r}")
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:200]}")
    # `auto` streamed says what it says unstreamed, and its text arrives as it is written.
    for seed in range(4):
        total += 1
        name = f"tool_choice auto seed {seed}: streamed equals plain"
        try:
            kw = dict(max_tokens=min(max_tokens, 64), temperature=1.0, seed=seed)
            plain_content, plain_calls, plain_reason = tool_call(client, "auto", False, **kw)
            pieces = []
            content, calls, reason = tool_call(client, "auto", True, pieces=pieces, **kw)
            if (content or "") != (plain_content or "") or reason != plain_reason:
                raise ValueError(f"{content!r} {reason} vs {plain_content!r} {plain_reason}")
            if [c[1:] for c in calls] != [c[1:] for c in plain_calls]:
                raise ValueError(f"calls {calls} vs {plain_calls}")
            if len(content or "") > 20 and len(pieces) < 2:
                raise ValueError(f"{len(content)} characters of content in one chunk")
            passed += 1
            print(f"PASS {name}: {len(calls)} calls, content in {len(pieces)} chunks")
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:200]}")
    total += 1
    try:
        first = client.chat.completions.create(
            model="m", tools=[WEATHER], tool_choice="required", max_tokens=max_tokens, seed=5,
            messages=[{"role": "user", "content": "Weather in Rome?"}]).choices[0].message
        call = first.tool_calls[0]
        messages = [
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "{\"temperature\": 21}"},
        ]
        second = client.chat.completions.create(
            model="m", tools=[WEATHER], tool_choice="auto", messages=messages,
            max_tokens=max_tokens, seed=5).choices[0]
        if second.finish_reason not in ("stop", "tool_calls"):
            raise ValueError(f"second turn: {second.finish_reason}")
        if not (second.message.content or second.message.tool_calls):
            raise ValueError("second turn: neither content nor a call")
        if "<tool_call>" in (second.message.content or ""):
            raise ValueError("markup in content")
        passed += 1
        print(f"PASS multi-turn with a tool result: {second.message.content!r} "
              f"{len(second.message.tool_calls or [])} calls")
    except Exception as e:  # noqa: BLE001
        print(f"FAIL multi-turn with a tool result: {type(e).__name__}: {str(e)[:200]}")
    return passed, total


def start_llama_server(binary, model, api_key):
    """Starts llama-server with its Jinja templates on a free port and waits until /health
    answers 200; returns the process and its `/v1` base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [binary, "-m", model, "--port", str(port), "--host", "127.0.0.1", "--jinja",
           "-c", "2048", "-np", "2", "--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("openai_structured_check: llama-server did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help="our worker binary")
    ap.add_argument("--llama-server", help="run the checks against llama-server instead")
    ap.add_argument("--model", action="append", required=True, help="repeat for several")
    ap.add_argument("--max-tokens", type=int, default=160)
    args = ap.parse_args()
    if bool(args.worker) == bool(args.llama_server):
        ap.error("give one of --worker and --llama-server")
    failed = 0
    for model in args.model:
        if args.worker:
            proc, base_url = start_worker(args.worker, model, "check-key")
        else:
            proc, base_url = start_llama_server(args.llama_server, model, "check-key")
        try:
            client = openai.OpenAI(base_url=base_url, api_key="check-key", max_retries=0)
            passed = total = 0
            for name, schema in SCHEMAS.items():
                for stream in (False, True):
                    total += 1
                    label = f"{name} {'streamed' if stream else 'plain'}"
                    try:
                        text, reason = ask(client, name, schema, stream, args.max_tokens)
                        if reason != "stop":
                            raise ValueError(f"finish_reason {reason!r} (cut at max_tokens)")
                        jsonschema.validate(json.loads(text), schema)
                        passed += 1
                        print(f"PASS {label}: {text}")
                    except Exception as e:  # noqa: BLE001 - every failure is reported
                        print(f"FAIL {label}: {type(e).__name__}: {str(e)[:200]}")
            total += 1
            try:
                c = client.chat.completions.create(
                    model="m", messages=[{"role": "user",
                                          "content": "A JSON object with one short key, please."}],
                    response_format={"type": "json_object"}, max_tokens=args.max_tokens,
                    seed=3).choices[0]
                if c.finish_reason != "stop" or not isinstance(json.loads(c.message.content), dict):
                    raise ValueError(c.finish_reason)
                passed += 1
                print(f"PASS json_object: {c.message.content}")
            except Exception as e:  # noqa: BLE001
                print(f"FAIL json_object: {type(e).__name__}: {str(e)[:200]}")
            print(f"{model.rsplit('/', 1)[-1]}: {passed}/{total} structured outputs valid")
            failed += total - passed
            tp, tt = check_tools(client, args.max_tokens)
            print(f"{model.rsplit('/', 1)[-1]}: {tp}/{tt} tool-call checks passed")
            failed += tt - tp
        finally:
            proc.kill()
            proc.wait()
    sys.exit(1 if failed and args.worker else 0)


if __name__ == "__main__":
    main()
