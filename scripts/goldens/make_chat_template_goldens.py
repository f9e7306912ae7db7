#!/usr/bin/env python3
"""Goldens for worker-tokenizer's chat templates: the SmolLM2 and Qwen2.5 templates stored in
the fixture GGUFs, rendered with Python jinja2 set up exactly as HF transformers'
`apply_chat_template` sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, `raise_exception`, `tojson` without ASCII escaping).

Run with the fixture venv (gguf, jinja2):
    ~/.cache/llama-orch-worker/venv/bin/python scripts/goldens/make_chat_template_goldens.py
Writes tests/golden/tokenizer/chat_templates.json.
"""
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


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
