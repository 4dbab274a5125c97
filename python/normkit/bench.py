"""``normkit bench``: normkit vs the NumPy reference vs PyTorch CPU, in one run.

Every case runs float32 through normkit and PyTorch in turn (normkit, torch, normkit, ...) so drifts
in machine load hit both alike, and reports medians. Each timed call comes right after untimed calls
of the same contender, at least one and for at least SETTLE_SECONDS, as in a loop of calls:
otherwise each would start from the state the one before it left (dirty lines in the cache, and
another runtime's OpenMP threads still spinning on the same cores: PyTorch's libgomp spins for
milliseconds after a call), which moved PyTorch's BatchNorm training backward on (32, 64, 56, 56)
from 4.2 ms after itself to 3.7 ms after normkit, and normkit's (8, 512, 7, 7) inference from 39-40
us after itself to 66-76 us after PyTorch (with one untimed call; its loop of calls: 28-37 us,
PyTorch's 55-67). The NumPy reference runs in rounds of its own after them: taking its turn in the
same rounds, its hundreds of megabytes of temporaries slowed the calls after it even past an untimed
call (normkit's BatchNorm training backward on (32, 64, 56, 56): 2.2-2.7 ms without it, 2.6-3.4 ms
with it, in the same session). Each row also gives normkit's share of the bandwidth of a parallel
copy moving the same compulsory bytes (inputs read once, outputs written once), timed in the
normkit/PyTorch rounds. All contenders allocate their outputs, as a user's call does. Writes
bench.md, bench.json and bench.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

import normkit
from normkit import _core, reference


@dataclass
class Case:
    kernel: str  # layer_norm_fwd, layer_norm_bwd, batch_norm_train_fwd, ...
    label: str
    shape: tuple
    axis: int


LN_SHAPES = [(8192, 768), (4096, 4096), (65536, 128), (1, 262144), (256, 64)]
BN_SHAPES = [
    ("32x64x56x56", (32, 64, 56, 56), 1),
    ("256x256x14x14", (256, 256, 14, 14), 1),
    ("8x512x7x7", (8, 512, 7, 7), 1),
    ("1024x1024", (1024, 1024), 1),
    ("nhwc 32x56x56x64", (32, 56, 56, 64), -1),
    ("32x16384", (32, 16384), 1),
]
QUICK_LN = [(8192, 768), (1, 262144)]
QUICK_BN = [BN_SHAPES[0], BN_SHAPES[3]]


def cases(quick: bool) -> list[Case]:
    out = []
    for shape in QUICK_LN if quick else LN_SHAPES:
        label = "x".join(map(str, shape))
        out += [
            Case(k, label, shape, -1)
            for k in ("layer_norm_fwd", "layer_norm_bwd", "layer_norm_fwd+bwd")
        ]
    for label, shape, axis in QUICK_BN if quick else BN_SHAPES:
        out += [
            Case(k, label, shape, axis)
            for k in ("batch_norm_train_fwd", "batch_norm_infer", "batch_norm_train_bwd")
        ]
    return out


def _compulsory_bytes(case: Case, x: np.ndarray) -> int:
    # inputs read once + outputs written once (parameters and statistics are negligible)
    if case.kernel == "layer_norm_fwd+bwd":
        return x.nbytes * 5  # forward: x, y; backward: dy, x, dx
    return x.nbytes * (3 if case.kernel.endswith("bwd") else 2)


def contenders(case: Case, torch):
    """{name: zero-argument callable} for one case."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    dy = rng.standard_normal(case.shape, dtype=np.float32)
    c = case.shape[case.axis]
    g = rng.standard_normal(c, dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32)
    fns = {}
    if case.kernel.startswith("layer_norm"):
        _, mean, rstd = normkit.layer_norm_forward(x, g, b)
        if case.kernel == "layer_norm_fwd":
            fns["normkit"] = lambda: normkit.layer_norm(x, g, b)
            fns["numpy"] = lambda: reference.layer_norm_forward(x, g, b)
        elif case.kernel == "layer_norm_bwd":
            fns["normkit"] = lambda: normkit.layer_norm_backward(dy, x, mean, rstd, g)
            fns["numpy"] = lambda: reference.layer_norm_backward(dy, x, mean, rstd, g)
        else:

            def nk_fwd_bwd():
                _, m, r = normkit.layer_norm_forward(x, g, b)
                return normkit.layer_norm_backward(dy, x, m, r, g)

            def np_fwd_bwd():
                _, m, r = reference.layer_norm_forward(x, g, b)
                return reference.layer_norm_backward(dy, x, m, r, g)

            fns["normkit"], fns["numpy"] = nk_fwd_bwd, np_fwd_bwd
        if torch is not None:
            xt, gt, bt, dyt = (torch.from_numpy(a) for a in (x, g, b, dy))
            d = (case.shape[-1],)
            if case.kernel == "layer_norm_fwd":
                fns["torch"] = lambda: torch.nn.functional.layer_norm(xt, d, gt, bt)
            elif case.kernel == "layer_norm_fwd+bwd":
                xg, gg, bg = (a.clone().requires_grad_() for a in (xt, gt, bt))

                def torch_fwd_bwd():
                    y = torch.nn.functional.layer_norm(xg, d, gg, bg)
                    return torch.autograd.grad(y, (xg, gg, bg), dyt)

                fns["torch"] = torch_fwd_bwd
            else:
                xg, gg, bg = (a.clone().requires_grad_() for a in (xt, gt, bt))
                yg = torch.nn.functional.layer_norm(xg, d, gg, bg)
                fns["torch"] = lambda: torch.autograd.grad(yg, (xg, gg, bg), dyt, retain_graph=True)
        return x, fns

    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    _, mean, invstd = normkit.batch_norm_forward(x, None, None, g, b, training=True, axis=case.axis)
    kw = {"axis": case.axis}
    if case.kernel == "batch_norm_train_fwd":
        fns["normkit"] = lambda: normkit.batch_norm(x, rm, rv, g, b, training=True, **kw)
        fns["numpy"] = lambda: reference.batch_norm_forward(x, rm, rv, g, b, training=True, **kw)
    elif case.kernel == "batch_norm_infer":
        fns["normkit"] = lambda: normkit.batch_norm(x, rm, rv, g, b, **kw)
        fns["numpy"] = lambda: reference.batch_norm_forward(x, rm, rv, g, b, **kw)
    else:
        fns["normkit"] = lambda: normkit.batch_norm_backward(dy, x, mean, invstd, g, **kw)
        fns["numpy"] = lambda: reference.batch_norm_backward(dy, x, mean, invstd, g, **kw)
    if torch is not None:
        # torch wants channels on axis 1: channels-last data is a permuted view of the same
        # memory (torch's channels_last format).
        def to_torch(a):
            t = torch.from_numpy(a)
            return t.permute(0, 3, 1, 2) if case.axis == -1 else t

        xt, dyt = to_torch(x), to_torch(dy)
        gt, bt = torch.from_numpy(g), torch.from_numpy(b)
        rmt, rvt = torch.zeros(c), torch.ones(c)
        f = torch.nn.functional.batch_norm
        if case.kernel == "batch_norm_train_fwd":
            fns["torch"] = lambda: f(xt, rmt, rvt, gt, bt, training=True)
        elif case.kernel == "batch_norm_infer":
            fns["torch"] = lambda: f(xt, rmt, rvt, gt, bt, training=False)
        else:
            xg = to_torch(x.copy()).requires_grad_()
            gg, bg = gt.clone().requires_grad_(), bt.clone().requires_grad_()
            yg = f(xg, None, None, gg, bg, training=True)
            fns["torch"] = lambda: torch.autograd.grad(yg, (xg, gg, bg), dyt, retain_graph=True)
    return x, fns


SETTLE_SECONDS = 0.01


def _median_times(fns: dict, repeats: int) -> dict:
    """{name: median seconds}: rounds of every fn in turn, each timed call after untimed ones."""
    for fn in fns.values():  # warm-up: first touch, caches, buffer pool
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            # untimed: the timed call starts from this contender's own state
            settled = time.perf_counter() + SETTLE_SECONDS
            fn()
            while time.perf_counter() < settled:
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def _at_page_offset_of(like: np.ndarray) -> np.ndarray:
    """A new uint8 array of like's size, starting at like's offset within a 4 KiB page."""
    buf = np.empty(like.nbytes + 4096, np.uint8)
    start = (like.ctypes.data - buf.ctypes.data) % 4096
    return buf[start : start + like.nbytes]


def measure(case: Case, torch, repeats: int, with_numpy: bool) -> dict:
    x, fns = contenders(case, torch)
    numpy_fn = fns.pop("numpy")
    nbytes = _compulsory_bytes(case, x)
    # The copy yardstick takes its turn in the same rounds as the contenders, so that on a
    # shared host it sees the same load as they do (not that of the moment after the case).
    # Its source starts at the same offset within a page as its destination: with the
    # destination 16 bytes further on (as two arrays from malloc may well lie), every load
    # waits for a store to the same address modulo 4 KiB, and a 96 KiB copy took 36 us
    # instead of 3 (Zen 3), which made the smallest cases look faster than a copy.
    dst = _core.empty((nbytes // 2,), np.dtype(np.uint8))
    src = _at_page_offset_of(dst)
    src.fill(1)
    seconds = _median_times({**fns, "copy": lambda: _core.copy(dst, src)}, repeats)
    if with_numpy:
        seconds.update(_median_times({"numpy": numpy_fn}, repeats))
    copy_ms = 1e3 * seconds.pop("copy")
    ms = {name: 1e3 * t for name, t in seconds.items()}
    row = {
        **asdict(case),
        "shape": list(case.shape),
        "bytes": nbytes,
        "copy_ms": copy_ms,
        "ms": ms,
        "pct_of_copy": 100.0 * copy_ms / ms["normkit"],
    }
    for other in ("torch", "numpy"):
        if other in ms:
            row[f"speedup_vs_{other}"] = ms[other] / ms["normkit"]
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    have_torch = any("torch" in r["ms"] for r in rows)
    have_numpy = any("numpy" in r["ms"] for r in rows)
    head = ["kernel", "case", "normkit ms"]
    head += ["torch ms", "vs torch"] if have_torch else []
    head += ["numpy ms", "vs numpy"] if have_numpy else []
    head += ["GB/s", "% of copy"]
    lines = [
        f"normkit {meta['normkit']['version']} ({meta['normkit']['isa']}, "
        f"{meta['threads']} threads), torch {meta['torch'] or 'not installed'}, "
        f"{meta['date']}, {meta['machine']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["kernel"], r["label"], f"{r['ms']['normkit']:.3f}"]
        if have_torch:
            cells += [f"{r['ms']['torch']:.3f}", f"{r['speedup_vs_torch']:.2f}x"]
        if have_numpy:
            cells += [f"{r['ms']['numpy']:.3f}", f"{r['speedup_vs_numpy']:.2f}x"]
        cells += [f"{r['bytes'] / r['ms']['normkit'] / 1e6:.1f}", f"{r['pct_of_copy']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    if have_torch:
        speedups = [r["speedup_vs_torch"] for r in rows]
        lines += [
            "",
            f"Geometric-mean speed-up over torch: "
            f"{float(np.exp(np.mean(np.log(speedups)))):.2f}x over {len(rows)} cases.",
        ]
    return "\n".join(lines)


def plot(rows: list[dict], path: str, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['kernel'].replace('_norm', '')}\n{r['label']}" for r in rows]
    y = np.arange(len(rows))
    have_torch = all("speedup_vs_torch" in r for r in rows)
    fig, axes = plt.subplots(
        1, 2 if have_torch else 1, figsize=(13, 0.42 * len(rows) + 1.8), squeeze=False
    )
    ax = axes[0][-1]
    ax.barh(y, [r["pct_of_copy"] for r in rows], color="tab:green")
    ax.axvline(100, color="black", lw=0.8)
    ax.set_xlabel("% of the bandwidth of a same-size parallel copy")
    ax.set_yticks(y, labels if not have_torch else [""] * len(rows), fontsize=7)
    ax.invert_yaxis()
    ax.set_title("normkit: memory bandwidth used")
    if have_torch:
        ax = axes[0][0]
        s = [r["speedup_vs_torch"] for r in rows]
        ax.barh(y, s, color=["tab:blue" if v >= 1 else "tab:red" for v in s])
        ax.axvline(1, color="black", lw=0.8)
        ax.set_xlabel("speed-up over PyTorch CPU (same threads; > 1 is faster)")
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title("normkit vs PyTorch")
    fig.suptitle(f"normkit bench, float32, {meta['threads']} threads, {meta['normkit']['isa']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="two shapes per kernel, few repeats")
    parser.add_argument("--out", default="normkit-bench", help="folder for bench.md/json/png")
    parser.add_argument("--threads", type=int, default=None, help="threads for every contender")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 20)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    threads = args.threads or normkit.get_num_threads()
    normkit.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    repeats = args.repeats or (5 if args.quick else 20)
    todo = cases(args.quick)
    try:
        from tqdm import tqdm

        progress = tqdm(todo, desc="bench", unit="case", file=sys.stderr, disable=args.no_progress)
    except ImportError:
        progress = todo
    rows = []
    for case in progress:
        if hasattr(progress, "set_postfix_str"):
            progress.set_postfix_str(f"{case.kernel} {case.label}")
        rows.append(measure(case, torch, repeats, not args.no_numpy))
    meta = {
        "normkit": normkit.info(),
        "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__,
        "threads": threads,
        "repeats": repeats,
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    os.makedirs(args.out, exist_ok=True)
    table = markdown(rows, meta)
    print(table)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    try:
        plot(rows, os.path.join(args.out, "bench.png"), meta)
    except ImportError:
        print("matplotlib not installed: no bench.png (pip install 'normkit[bench]')")
    print(f"\nwrote bench.md, bench.json and bench.png to {args.out}")
    return 0
