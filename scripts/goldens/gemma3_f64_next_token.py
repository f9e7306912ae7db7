#!/usr/bin/env python3
"""The real Gemma-3-270M's next-token logits in float64, to judge a near-tie.

The independent forward pass of `make_tiny_model_goldens.py` (numpy float64 over gguf-py's
dequantized weights; for gemma3: embeddings times sqrt(d), RMS norms, q/k norms, neox rope
with the local layers' base, a 512-position window on five layers of six, GeGLU with
gelu-tanh, post-attention and post-MLP norms), run on the real model, prints the top five
logits after a token-id prompt. It decides which side of a greedy difference is right where
llama.cpp's logits and ours are both within their own rounding (about 1.2 apart on this
model, logits_goldens.rs).

Measured (2026-12-06): after "The three primary colors are" + " red" "," (ids
2,818,1806,5905,7913,659,2604,236764), where the greedy goldens record llama.cpp's top-2 gap as
0.444, float64 gives " yellow" (3730) 29.3845 and " blue" (7070) 29.2179: a gap of 0.167.
Ours chose " blue" by 0.187 (f16 KV cache), " blue" by 0.210 (f32) and " yellow" by 0.059
(Q8_0): a near-tie that rounding decides.

Usage (about 20 s, 3 GB of memory):

    ~/.cache/llama-orch-worker/llama-venv/bin/python scripts/goldens/gemma3_f64_next_token.py \
        fixtures/models/gemma-3-270m-q4_k_m.gguf 2,818,1806,5905,7913,659,2604,236764
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_model_goldens import numpy_forward  # noqa: E402

forward, _ = numpy_forward(Path(sys.argv[1]))
ids = np.array([int(t) for t in sys.argv[2].split(",")])
logits = forward(ids)[-1]
top = np.argsort(-logits)[:5]
print([(int(t), round(float(logits[t]), 4)) for t in top])
