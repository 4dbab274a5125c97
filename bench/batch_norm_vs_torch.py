"""float32 BatchNorm: normkit vs PyTorch CPU, in one run.

    python bench/batch_norm_vs_torch.py [--threads N] [--repeats R]

Cases are interleaved (normkit, torch, normkit, ...) and each time is the median of R
repetitions. "train fwd" computes batch statistics, normalizes and updates the running
statistics; "train bwd" is the backward to dx, dgamma, dbeta given saved statistics;
"infer" normalizes with the running statistics. Both libraries allocate their outputs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import normkit

CASES = [
    ("(32,64,56,56) NCHW", (32, 64, 56, 56), 1),
    ("(256,256,14,14) NCHW", (256, 256, 14, 14), 1),
    ("(1024,1024)", (1024, 1024), 1),
    ("(32*56*56,64) NHWC", (32, 56, 56, 64), -1),
]


def median_times(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=normkit.get_num_threads())
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    normkit.set_num_threads(args.threads)
    print(f"normkit {normkit.info()}  torch {torch.__version__} threads={args.threads}")
    print(f"{'case':>22} {'pass':>10} {'normkit ms':>11} {'torch ms':>9} {'speed-up':>9}")
    rng = np.random.default_rng(0)
    for label, shape, axis in CASES:
        c = shape[axis]
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        g = rng.standard_normal(c, dtype=np.float32)
        b = rng.standard_normal(c, dtype=np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        _, mean, invstd = normkit.batch_norm_forward(x, None, None, g, b, training=True,
                                                     axis=axis)
        # PyTorch wants channels on axis 1: NHWC data is given to it as a permuted view, which
        # is its channels_last memory format (same bytes as ours).
        def to_torch(a):
            t = torch.from_numpy(a)
            return t.permute(0, 3, 1, 2) if axis == -1 else t

        xt, dyt = to_torch(x), to_torch(dy)
        gt, bt = torch.from_numpy(g), torch.from_numpy(b)
        rmt, rvt = torch.zeros(c), torch.ones(c)
        xg = to_torch(x.copy()).requires_grad_()
        gg, bg = gt.clone().requires_grad_(), bt.clone().requires_grad_()
        yg = torch.nn.functional.batch_norm(xg, None, None, gg, bg, training=True)

        fns = {
            "train fwd": (
                lambda: normkit.batch_norm(x, rm, rv, g, b, training=True, axis=axis),
                lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, gt, bt, training=True),
            ),
            "train bwd": (
                lambda: normkit.batch_norm_backward(dy, x, mean, invstd, g, axis=axis),
                lambda: torch.autograd.grad(yg, (xg, gg, bg), dyt, retain_graph=True),
            ),
            "infer": (
                lambda: normkit.batch_norm(x, rm, rv, g, b, axis=axis),
                lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, gt, bt, training=False),
            ),
        }
        for name, (nk, th) in fns.items():
            t = median_times({"normkit": nk, "torch": th}, args.repeats)
            print(f"{label:>22} {name:>10} {t['normkit'] * 1e3:11.3f} {t['torch'] * 1e3:9.3f} "
                  f"{t['torch'] / t['normkit']:8.2f}x")


if __name__ == "__main__":
    main()
