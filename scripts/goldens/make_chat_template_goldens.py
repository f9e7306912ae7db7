#!/usr/bin/env python3
"""Goldens for worker-tokenizer's chat templates: the SmolLM2 and Qwen2.5 templates stored in
the fixture GGUFs, and llama.cpp's copy of gpt-oss's template (`models/templates/` of the
llama-cpp-python sdist, fetched beside the vocabularies; the tiny gpt-oss model carries it),
rendered with Python jinja2 set up exactly as HF transformers' `apply_chat_template` sets it
up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
`raise_exception`, `tojson` without ASCII escaping, `strftime_now`, here at a fixed instant).
gpt-oss's cases pass messages as OpenAI clients send them (tool calls, tool results, a
`thinking` field) and a tool list.

Run with the fixture venv (gguf, jinja2):
    ~/.cache/llama-orch-worker/venv/bin/python scripts/goldens/make_chat_template_goldens.py
Writes tests/golden/tokenizer/chat_templates.json.
"""
import datetime
import hashlib
import json
import os
import pathlib

import gguf
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXTURES = pathlib.Path(os.environ.get("WORKER_FIXTURES_DIR") or pathlib.Path.home() / ".cache/llama-orch-worker")
MODELS = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "qwen25": "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"}
OUT = pathlib.Path(__file__).resolve().parents[2] / "tests/golden/tokenizer/chat_templates.json"

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "  Write a haiku.\n"},
    ],
    [{"role": "user", "content": "Unicode: 中文 🦙 e\u0301 \"quotes\" <b>tags</b> {{ not a tag }}"}],
]


# The instant `strftime_now` renders: 2026-12-04 12:00:00 UTC (the Rust test passes the same
# seconds as ChatContext::now).
NOW_EPOCH = 1796385600

# llama.cpp's reference templates, rendered with OpenAI-shaped messages and tools.
REFERENCE_TEMPLATES = {"gpt-oss": "openai-gpt-oss-120b.jinja"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TOOL_CONVERSATIONS = [
    ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL]),
    ([
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"},
    ], [WEATHER_TOOL]),
    ([
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "thinking": "Simple arithmetic.", "content": "4"},
    ], None),
]


def strftime_now(fmt):
    return datetime.datetime.fromtimestamp(NOW_EPOCH, datetime.timezone.utc).strftime(fmt)


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    goldens = {}
    for name, file in MODELS.items():
        reader = gguf.GGUFReader(FIXTURES / "models" / file)
        fields = reader.fields
        source = fields["tokenizer.chat_template"].contents()
        tokens = fields["tokenizer.ggml.tokens"].contents()
        bos = tokens[fields["tokenizer.ggml.bos_token_id"].contents()]
        eos = tokens[fields["tokenizer.ggml.eos_token_id"].contents()]
        template = env.from_string(source)
        cases = []
        for messages in CONVERSATIONS:
            for add_generation_prompt in (True, False):
                cases.append({
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "expected": template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos, eos_token=eos),
                })
        goldens[name] = {
            "model": file,
            "template_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "cases": cases,
        }
    for name, file in REFERENCE_TEMPLATES.items():
        source = (FIXTURES / "vocab" / "templates" / file).read_text(encoding="utf-8")
        template = env.from_string(source)
        cases = []
        conversations = [(m, None) for m in CONVERSATIONS] + TOOL_CONVERSATIONS
        for messages, tools in conversations:
            for add_generation_prompt in (True, False):
                kwargs = {"tools": tools} if tools else {}
                cases.append({
                    "messages": messages,
                    "tools": tools,
                    "add_generation_prompt": add_generation_prompt,
                    "expected": template.render(messages=messages,
                                                add_generation_prompt=add_generation_prompt,
                                                **kwargs),
                })
        goldens[name] = {
            "template": file,
            "now_epoch": NOW_EPOCH,
            "template_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "cases": cases,
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
