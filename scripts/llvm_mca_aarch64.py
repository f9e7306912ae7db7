#!/usr/bin/env python3
"""llvm-mca estimates of the aarch64 dot-product kernels, ours beside llama.cpp's.

No native ARM machine was available, so throughput is estimated, not measured: the assembly
of our panel kernels (rustc, release, aarch64-unknown-linux-gnu) and of llama.cpp's
`ggml_vec_dot_*` from the llama-cpp-python 0.3.36 sdist (arch/arm/quants.c, compiled with
aarch64-linux-gnu-gcc -O3 -S for three -march levels) go through llvm-mca's scheduling
models, loop by loop:

1. Each function's control-flow graph gives its natural loops (back edges to a dominator)
   and their nesting.
2. The kernel's *block loop* (one iteration: one block, or one panel block, of every row and
   activation row the call handles) is the loop `len(trips)` levels above the innermost loop
   that holds the integer dot products; `trips` are the iteration counts of the loops nested
   in it, from the source (the compiler left those loops rolled). The multiply-accumulates
   per block-loop iteration, counted from the instructions (sdot 16, smmla/usmmla 32,
   smull/smlal/mul on 8x16 bits 8), must equal the source's count, or the script stops.
3. llvm-mca runs each loop's own instructions (without its inner loops) as a steady-state
   loop of 100 iterations; a block-loop iteration costs its own cycles plus, for each inner
   loop, trips x its cycles.
4. cycles per block = cycles per block-loop iteration x block size / multiply-accumulates
   per iteration: per 32-element block (Q4_0, Q8_0, MXFP4) or 256-element super-block
   (Q4_K, Q6_K) of one weight row against one activation row.

Everything outside the block loop (the per-panel or per-row start and end) is left out: it
is paid once per 16 rows x 896+ elements. Usage (from the repository root; needs
aarch64-linux-gnu-gcc, rustup's aarch64 std and llvm-mca from Debian's llvm-19):

    scripts/llvm_mca_aarch64.py [--sdist PATH] [--llvm-mca llvm-mca-19]
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tarfile
import tempfile

SDIST = "~/.cache/llama-orch-worker/downloads/pypi/llama_cpp_python-0.3.36.tar.gz"
GGML = "llama_cpp_python-0.3.36/vendor/llama.cpp/ggml"
# llama.cpp builds, by the -march gcc gets, and the llvm-mca feature flags for each.
MARCH = {
    "neon": "armv8-a",
    "dotprod": "armv8.2-a+dotprod+fp16",
    "i8mm": "armv8.6-a+dotprod+i8mm+fp16",
}
# CPU models per table: plain NEON and dotprod run on all three; i8mm needs V1 (M1 and N1
# have no i8mm).
CPUS = {
    "neon": ["apple-m1", "neoverse-n1", "neoverse-v1"],
    "dotprod": ["apple-m1", "neoverse-n1", "neoverse-v1"],
    "i8mm": ["neoverse-v1"],
}
ALL_CPUS = ["apple-m1", "neoverse-n1", "neoverse-v1"]

# (weight type, elements per block, activation rows per call, table,
#  ours: (function, trips), llama.cpp: (function, loop filter, trips, rows x acts per call))
# Our functions are `aarch64_panel::{table}::{type}::{fn}`: `imp` / `imp_many` where the
# table enables features beyond NEON, else the wrappers `one` / `many` into which the NEON
# body inlines. A panel block is 16 rows; `many` takes 4 activation rows.
KERNELS = [
    ("Q4_0", 32, 1, "neon", ("q4_0", "one", [4]), ("q4_0_q8_0", None, [])),
    ("Q4_0", 32, 4, "neon", ("q4_0", "many", [4]), ("q4_0_q8_0", None, [])),
    ("Q4_0", 32, 1, "dotprod", ("q4_0", "imp", []), ("q4_0_q8_0", None, [])),
    ("Q4_0", 32, 4, "dotprod", ("q4_0", "imp_many", []), ("q4_0_q8_0", None, [])),
    ("Q4_0", 32, 4, "i8mm", ("q4_0", "imp_many", []), ("q4_0_q8_0", "mmla", [])),
    ("Q8_0", 32, 1, "neon", ("q8_0", "one", [4]), ("q8_0_q8_0", None, [])),
    ("Q8_0", 32, 4, "neon", ("q8_0", "many", [4]), ("q8_0_q8_0", None, [])),
    ("Q8_0", 32, 1, "dotprod", ("q8_0", "imp", []), ("q8_0_q8_0", None, [])),
    ("Q8_0", 32, 4, "dotprod", ("q8_0", "imp_many", []), ("q8_0_q8_0", None, [])),
    ("Q8_0", 32, 4, "i8mm", ("q8_0", "imp_many", []), ("q8_0_q8_0", "mmla", [])),
    ("MXFP4", 32, 1, "neon", ("mxfp4", "one", [4]), ("mxfp4_q8_0", None, [])),
    ("MXFP4", 32, 4, "neon", ("mxfp4", "many", []), ("mxfp4_q8_0", None, [])),
    ("MXFP4", 32, 1, "dotprod", ("mxfp4", "imp", []), ("mxfp4_q8_0", None, [])),
    ("MXFP4", 32, 4, "dotprod", ("mxfp4", "imp_many", []), ("mxfp4_q8_0", None, [])),
    ("MXFP4", 32, 4, "i8mm", ("mxfp4", "imp_many", []), ("mxfp4_q8_0", None, [])),
    ("Q4_K", 256, 1, "neon", ("q4_k", "one", [4, 8]), ("q4_K_q8_K", None, [])),
    ("Q4_K", 256, 4, "neon", ("q4_k", "many", [8, 4]), ("q4_K_q8_K", None, [])),
    ("Q4_K", 256, 1, "dotprod", ("q4_k", "imp", [4, 8]), ("q4_K_q8_K", None, [])),
    ("Q4_K", 256, 4, "dotprod", ("q4_k", "imp_many", [8]), ("q4_K_q8_K", None, [])),
    ("Q4_K", 256, 4, "i8mm", ("q4_k", "imp_many", [8]), ("q4_K_q8_K", "mmla", [])),
    ("Q6_K", 256, 1, "neon", ("q6_k", "one", [4, 8]), ("q6_K_q8_K", None, [2])),
    ("Q6_K", 256, 4, "neon", ("q6_k", "many", [8]), ("q6_K_q8_K", None, [2])),
    ("Q6_K", 256, 1, "dotprod", ("q6_k", "imp", [4, 8]), ("q6_K_q8_K", None, [])),
    ("Q6_K", 256, 4, "dotprod", ("q6_k", "imp_many", [8]), ("q6_K_q8_K", None, [])),
    ("Q6_K", 256, 4, "i8mm", ("q6_k", "imp_many", [8]), ("q6_K_q8_K", "mmla", [2])),
]
# Multiply-accumulates per block-loop iteration: ours, a panel block of 16 rows, or one quad
# (4 rows) per pass against 4 activation rows, or with i8mm two quads (8 rows) per pass;
# llama.cpp, one row (two 32-element blocks per iteration, or one super-block) or, in its
# i8mm paths, 2 rows x 2 activation rows.
def ours_macs(block, acts, table):
    if acts == 1:
        return 16 * block
    return (8 if table == "i8mm" and block == 32 else 4) * block * acts


def llama_macs(block, mmla):
    if mmla:
        return 4 * block
    return 2 * block if block == 32 else block


BRANCH = re.compile(
    r"^(b\.?(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le)|cbn?z|tbn?z|ret|br|b)\s"
)
DOTS = [
    (re.compile(r"^(s|u|us|su)dot\s"), 16),
    (re.compile(r"^(s|u|us)mmla\s"), 32),
    (re.compile(r"^[su]m(ull|lal)2?\s+v\d+\.8h"), 8),
    (re.compile(r"^(mul|mla)\s+v\d+\.8h"), 8),
]


def macs(insns):
    return sum(n for x in insns for r, n in DOTS if r.match(x))


def functions(path):
    """(name, lines) of every global function in an assembly file."""
    name, body = None, []
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r"^([A-Za-z_$][\w.$]*):", line)
        if m:
            if name:
                yield name, body
            name, body = m.group(1), []
        elif name is not None:
            if line.startswith(".Lfunc_end") or re.match(r"^\s*\.size\s", line):
                yield name, body
                name, body = None, []
            else:
                body.append(line)


def basic_blocks(body):
    """Basic blocks of a function: [{'insns': [...], 'succ': [...]}], in layout order."""
    code = [l.split("//")[0].strip() for l in body]
    code = [c for c in code if c]
    targets = {m.group(1) for c in code if not c.startswith(".")
               for m in [re.search(r"(\.L\w+)$", c)] if m}
    bbs, labels, cur = [], {}, []

    def close():
        nonlocal cur
        if cur:
            bbs.append({"insns": cur})
        cur = []

    for c in code:
        m = re.match(r"^(\.L\w+):$", c)
        if m and m.group(1) in targets:
            close()
            labels[m.group(1)] = len(bbs)
        elif not c.startswith("."):
            cur.append(c)
            if BRANCH.match(c):
                close()
    close()
    for i, b in enumerate(bbs):
        last, succ = b["insns"][-1], []
        m = BRANCH.match(last)
        if m:
            t = re.search(r"(\.L\w+)$", last)
            if t and t.group(1) in labels:
                succ.append(labels[t.group(1)])
            if m.group(1) not in ("b", "ret", "br") and i + 1 < len(bbs):
                succ.append(i + 1)
        elif i + 1 < len(bbs):
            succ.append(i + 1)
        b["succ"] = succ
    return bbs


def natural_loops(bbs):
    """{header: set of blocks} of the natural loops (loops sharing a header merged)."""
    n = len(bbs)
    pred = [[] for _ in range(n)]
    for i, b in enumerate(bbs):
        for s in b["succ"]:
            pred[s].append(i)
    dom = [set(range(n)) for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for i in range(1, n):
            ps = [dom[p] for p in pred[i]]
            d = (set.intersection(*ps) if ps else set()) | {i}
            if d != dom[i]:
                dom[i], changed = d, True
    loops = {}
    for u in range(n):
        for v in bbs[u]["succ"]:
            if v in dom[u]:
                body, stack = {u, v}, [u]
                while stack:
                    x = stack.pop()
                    if x != v:
                        for p in pred[x]:
                            if p not in body:
                                body.add(p)
                                stack.append(p)
                loops.setdefault(v, set()).update(body)
    return loops


class Loop:
    def __init__(self, bbs, blocks, parent=None):
        self.blocks, self.parent, self.children = blocks, parent, []
        self.bbs = bbs

    def own(self):
        inner = set().union(*[c.blocks for c in self.children])
        return [x for i in sorted(self.blocks - inner) for x in self.bbs[i]["insns"]]


def loop_forest(bbs):
    raw = natural_loops(bbs)
    loops = {h: Loop(bbs, b) for h, b in raw.items()}
    for h, lp in loops.items():
        outer = [o for o in loops.values() if o is not lp and lp.blocks < o.blocks]
        if outer:
            lp.parent = min(outer, key=lambda o: len(o.blocks))
            lp.parent.children.append(lp)
    return list(loops.values())


def mca_cycles(insns, cpu, llvm_mca):
    """llvm-mca's steady-state cycles per iteration of `insns` run as a loop."""
    src = "\n".join(insns) + "\n"
    r = subprocess.run(
        [llvm_mca, "-mtriple=aarch64", f"-mcpu={cpu}", "-mattr=+dotprod,+i8mm,+fullfp16",
         "-iterations=100"], input=src, capture_output=True, text=True, check=True)
    total = int(re.search(r"Total Cycles:\s+(\d+)", r.stdout).group(1))
    return total / 100


def block_cycles(asm, fname, select, trips, want_macs, block, cpus, llvm_mca):
    """{cpu: cycles per block} of function `fname` (see the module documentation)."""
    found = [body for name, body in functions(asm) if re.search(fname, name)]
    if len(found) != 1:
        sys.exit(f"{fname}: {len(found)} functions match in {asm}")
    bbs = basic_blocks(found[0])
    loops = [lp for lp in loop_forest(bbs)
             if not lp.children and (select is None or any(select in x for x in lp.own()))]
    inner = max(loops, key=lambda lp: macs(lp.own()))
    chain = [inner]
    for _ in trips:
        chain.insert(0, chain[0].parent)
    for lp, t in zip(chain, trips):
        if len(lp.children) != 1:
            sys.exit(f"{fname}: a loop of the chain has {len(lp.children)} inner loops")
    got = macs(chain[-1].own())
    for lp, t in zip(reversed(chain[:-1]), reversed(trips)):
        got = macs(lp.own()) + t * got
    if got != want_macs:
        sys.exit(f"{fname}: {got} multiply-accumulates per block loop, the source says {want_macs}")
    out = {}
    for cpu in cpus:
        c = mca_cycles(chain[-1].own(), cpu, llvm_mca)
        for lp, t in zip(reversed(chain[:-1]), reversed(trips)):
            c = mca_cycles(lp.own(), cpu, llvm_mca) + t * c
        out[cpu] = c * block / want_macs
    return out


def build_ours():
    subprocess.run(
        ["cargo", "rustc", "--quiet", "--release", "--target", "aarch64-unknown-linux-gnu",
         "-p", "worker-compute", "--lib", "--", "--emit", "asm", "-C", "codegen-units=1"],
        check=True)
    files = glob.glob("target/aarch64-unknown-linux-gnu/release/deps/worker_compute-*.s")
    return max(files, key=os.path.getmtime)


def build_llama(sdist, out):
    with tarfile.open(os.path.expanduser(sdist)) as t:
        members = [m for m in t.getmembers() if m.name.startswith(GGML + "/")]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        t.extractall(out, members=members, **safe)
    g = os.path.join(out, GGML)
    asm = {}
    for table, march in MARCH.items():
        asm[table] = os.path.join(out, f"quants-{table}.s")
        subprocess.run(
            ["aarch64-linux-gnu-gcc", "-O3", "-S", f"-march={march}", "-D_GNU_SOURCE",
             f"-I{g}/include", f"-I{g}/src", f"-I{g}/src/ggml-cpu",
             f"{g}/src/ggml-cpu/arch/arm/quants.c", "-o", asm[table]], check=True)
    return asm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sdist", default=SDIST)
    ap.add_argument("--llvm-mca", default="llvm-mca-19")
    args = ap.parse_args()
    ours = build_ours()
    with tempfile.TemporaryDirectory() as tmp:
        llama = build_llama(args.sdist, tmp)
        head = " | ".join(f"{c} ours | {c} llama.cpp" for c in ALL_CPUS)
        print(f"| type | table | activation rows | {head} |")
        print("|" + " --- |" * (3 + 2 * len(ALL_CPUS)))
        for ty, block, acts, table, (o_ty, o_fn, o_trips), (l_fn, l_sel, l_trips) in KERNELS:
            cpus = CPUS[table]
            sym = rf"aarch64_panel\d+{table}\d+{o_ty}\d+{o_fn}17h"
            a = block_cycles(ours, sym, None, o_trips, ours_macs(block, acts, table), block,
                             cpus, args.llvm_mca)
            mmla = l_sel == "mmla"
            b = block_cycles(llama[table], rf"^ggml_vec_dot_{l_fn}$", l_sel, l_trips,
                             llama_macs(block, mmla), block, cpus, args.llvm_mca)
            cells = " | ".join(f"{a[c]:.2f} | {b[c]:.2f}" if c in cpus else "- | -"
                               for c in ALL_CPUS)
            print(f"| {ty} | {table} | {acts} | {cells} |")


if __name__ == "__main__":
    main()
