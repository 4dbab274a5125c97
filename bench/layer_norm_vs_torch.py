"""float32 LayerNorm: normkit vs PyTorch CPU (and the NumPy reference), in one run.

    python bench/layer_norm_vs_torch.py [--threads N] [--repeats R]

Cases are interleaved (normkit, torch, numpy, normkit, ...) so drifts in machine load hit
every contender alike; each time is the median of R repetitions. "fwd" is layer_norm(x, g, b);
"fwd+bwd" is the forward plus the backward to dx, dgamma and dbeta. Both libraries allocate
their outputs, as a user's call would.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import normkit
from normkit import reference

SHAPES = [(8192, 768), (65536, 128), (1, 262144)]


def median_times(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
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
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    normkit.set_num_threads(args.threads)
    print(f"normkit {normkit.info()}  torch {torch.__version__} threads={args.threads}")
    print(f"{'shape':>14} {'pass':>8} {'normkit ms':>11} {'torch ms':>9} {'numpy ms':>9} "
          f"{'vs torch':>9} {'vs numpy':>9}")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        d = shape[-1]
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        g = rng.standard_normal(d, dtype=np.float32)
        b = rng.standard_normal(d, dtype=np.float32)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        gt, bt = torch.from_numpy(g), torch.from_numpy(b)
        xg = xt.clone().requires_grad_()
        gg, bg = gt.clone().requires_grad_(), bt.clone().requires_grad_()

        def nk_fwd():
            normkit.layer_norm(x, g, b)

        def nk_fwd_bwd():
            y, mean, rstd = normkit.layer_norm_forward(x, g, b)
            normkit.layer_norm_backward(dy, x, mean, rstd, g)

        def torch_fwd():
            with torch.no_grad():
                torch.nn.functional.layer_norm(xt, (d,), gt, bt)

        def torch_fwd_bwd():
            xg.grad = gg.grad = bg.grad = None
            torch.nn.functional.layer_norm(xg, (d,), gg, bg).backward(dyt)

        def np_fwd():
            reference.layer_norm_forward(x, g, b)

        def np_fwd_bwd():
            _, mean, rstd = reference.layer_norm_forward(x, g, b)
            reference.layer_norm_backward(dy, x, mean, rstd, g)

        for label, nk, th, npf in [("fwd", nk_fwd, torch_fwd, np_fwd),
                                   ("fwd+bwd", nk_fwd_bwd, torch_fwd_bwd, np_fwd_bwd)]:
            fns = {"normkit": nk, "torch": th}
            if not args.no_numpy:
                fns["numpy"] = npf
            t = median_times(fns, args.repeats)
            t_np = t.get("numpy", float("nan"))
            print(f"{str(shape):>14} {label:>8} {t['normkit']*1e3:11.3f} {t['torch']*1e3:9.3f} "
                  f"{t_np*1e3:9.3f} {t['torch']/t['normkit']:8.2f}x {t_np/t['normkit']:8.2f}x")


if __name__ == "__main__":
    main()
