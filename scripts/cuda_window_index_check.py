#!/usr/bin/env python3
"""The index arithmetic of the CUDA decode attention with a sliding window, transliterated.

attention_decode_window_f16 (kernels/attention.cu, attention_decode_split) runs a grid of
nsplit blocks of AD_SPAN positions, AD_WARPS warps each taking tiles of 32 positions; with a
window it exits blocks wholly before the window's start, skips tiles wholly before it and
masks the positions before it; attention_combine_window (combine_splits) merges the splits
from window_start // AD_SPAN to last // AD_SPAN. This walks the same loops on the host, no
GPU needed, and checks for every position below 640 and windows from 1 to past the cache:
each position of the window is scored exactly once, every scoring tile holds a live position
(so its max is finite), the combine reads exactly the blocks that ran, and the block that
stores the row's key and value runs. Run: python3 scripts/cuda_window_index_check.py
"""

AD_WARPS, AD_SPAN = 4, 128


def window_start(last, window):
    return max(0, last + 1 - window) if window > 0 else 0


def check(max_pos, last, window):
    nsplit = -(-max_pos // AD_SPAN)
    ws = window_start(last, window)
    seen, ran, stores = [], [], 0
    for y in range(nsplit):
        first = y * AD_SPAN
        if first > last or first + AD_SPAN <= ws:
            continue
        ran.append(y)
        if y == (last // AD_SPAN if window > 0 else 0):
            stores += 1
        for warp in range(AD_WARPS):
            t0 = first + 32 * warp
            while t0 <= last and t0 < first + AD_SPAN:
                if t0 + 32 > ws:
                    live = [t0 + lane for lane in range(32) if ws <= t0 + lane <= last]
                    if not live:
                        return f"tile {t0} has no live position"
                    seen += live
                t0 += 32 * AD_WARPS
    used = min(last // AD_SPAN + 1, nsplit)
    if sorted(seen) != list(range(ws, last + 1)):
        return "the scored positions are not the window"
    if ran != list(range(ws // AD_SPAN, used)):
        return f"blocks {ran} ran, the combine reads {ws // AD_SPAN}..{used}"
    if stores != 1:
        return "no block stores the row"
    return None


def main():
    failures = 0
    for max_pos in [1, 127, 128, 129, 640]:
        for last in range(max_pos):
            for window in [0, 1, 2, 5, 31, 32, 33, 127, 128, 129, 200, 10**6]:
                # The host passes min(window, max_positions); 0 is no window.
                err = check(max_pos, last, min(window, max_pos))
                if err:
                    failures += 1
                    print(f"max_pos {max_pos} last {last} window {window}: {err}")
    print(f"{failures} failures")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
