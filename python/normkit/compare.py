"""``normkit compare``: train the same small networks with BatchNorm, LayerNorm and neither.

Data: scikit-learn's bundled digits (1797 images of 8x8 pixels, read from a file inside the
scikit-learn wheel). Models, written in NumPy around normkit's layers:

- MLP: 64 -> 128 -> 128 -> 10, each hidden layer Dense -> [norm] -> ReLU;
- CNN: 3x3 convolution (16 channels, im2col) -> [norm] -> ReLU -> 2x2 average pool -> Dense.

[norm] is nothing, BatchNorm (per channel / feature over the batch) or LayerNorm (per sample).
Each (model, variant, batch size) is trained from the same seed with SGD + momentum and
evaluated on a held-out split. BatchNorm is evaluated twice: in eval mode (running statistics,
as deployed) and in train mode (statistics of each validation batch of the same size), which
shows how much it depends on the batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import normkit
from normkit import layers as fast_layers
from normkit import reference

VARIANTS = ("none", "batchnorm", "layernorm")
LABELS = {"none": "no normalization", "batchnorm": "BatchNorm", "layernorm": "LayerNorm"}


# --- building blocks -------------------------------------------------------------------------


class Dense(normkit.Module):
    """y = x @ weight.T + bias, He-initialised."""

    _param_names = ("weight", "bias")

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, dtype) -> None:
        super().__init__()
        self.weight = (rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / n_in)).astype(dtype)
        self.bias = np.zeros(n_out, dtype)
        self.grad_weight = self.grad_bias = None

    def forward(self, x):
        self._x = x
        return x @ self.weight.T + self.bias

    def backward(self, dy):
        self.grad_weight = dy.T @ self._x
        self.grad_bias = dy.sum(axis=0)
        return dy @ self.weight


class Conv3x3(normkit.Module):
    """3x3 convolution, stride 1, zero padding 1, on (N, C, H, W), written with im2col."""

    _param_names = ("weight", "bias")

    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator, dtype) -> None:
        super().__init__()
        fan_in = 9 * c_in
        self.weight = (rng.standard_normal((c_out, fan_in)) * math.sqrt(2.0 / fan_in)).astype(dtype)
        self.bias = np.zeros(c_out, dtype)
        self.grad_weight = self.grad_bias = None

    @staticmethod
    def _im2col(x):
        n, c, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        cols = np.empty((n, h, w, c, 3, 3), x.dtype)
        for i in range(3):
            for j in range(3):
                cols[..., i, j] = padded[:, :, i : i + h, j : j + w].transpose(0, 2, 3, 1)
        return cols.reshape(n * h * w, c * 9)

    def forward(self, x):
        n, _, h, w = x.shape
        self._shape = x.shape
        self._cols = self._im2col(x)
        out = self._cols @ self.weight.T + self.bias  # (n*h*w, c_out)
        return np.ascontiguousarray(out.reshape(n, h, w, -1).transpose(0, 3, 1, 2))

    def backward(self, dy):
        n, c, h, w = self._shape
        dy_rows = dy.transpose(0, 2, 3, 1).reshape(n * h * w, -1)
        self.grad_weight = dy_rows.T @ self._cols
        self.grad_bias = dy_rows.sum(axis=0)
        dcols = (dy_rows @ self.weight).reshape(n, h, w, c, 3, 3)
        dpadded = np.zeros((n, c, h + 2, w + 2), dy.dtype)
        for i in range(3):
            for j in range(3):
                dpadded[:, :, i : i + h, j : j + w] += dcols[..., i, j].transpose(0, 3, 1, 2)
        return dpadded[:, :, 1:-1, 1:-1]


class ReLU(normkit.Module):
    def forward(self, x):
        self._mask = x > 0
        return x * self._mask

    def backward(self, dy):
        return dy * self._mask


class AvgPool2(normkit.Module):
    """2x2 average pooling with stride 2 on (N, C, H, W), H and W even."""

    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))

    def backward(self, dy):
        return np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3) * 0.25


class Flatten(normkit.Module):
    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class Sequential(normkit.Module):
    def __init__(self, *modules) -> None:
        super().__init__()
        self.modules = list(modules)

    def forward(self, x):
        for m in self.modules:
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(self.modules):
            dy = m.backward(dy)
        return dy

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules:
            m.train(mode)
        return self

    def params_and_grads(self):
        for i, m in enumerate(self.modules):
            for name, param, grad in m.params_and_grads():
                yield f"{i}.{name}", param, grad


def _norm(kind: str, shape, axis, backend, dtype):
    """A normalization layer for features of ``shape`` (channel count first for BatchNorm)."""
    lib = reference if backend == "numpy" else fast_layers
    if kind == "batchnorm":
        return lib.BatchNorm(shape[0], axis=axis, dtype=dtype)
    if kind == "layernorm":
        return lib.LayerNorm(shape, dtype=dtype)
    return None


def make_mlp(kind: str, rng, backend="normkit", dtype=np.float32, sizes=(64, 128, 128, 10)):
    modules = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        modules.append(Dense(n_in, n_out, rng, dtype))
        norm = _norm(kind, (n_out,), 1, backend, dtype)
        if norm is not None:
            modules.append(norm)
        modules.append(ReLU())
    modules.append(Dense(sizes[-2], sizes[-1], rng, dtype))
    return Sequential(*modules)


def make_cnn(kind: str, rng, backend="normkit", dtype=np.float32, channels=16, side=8, classes=10):
    modules = [Conv3x3(1, channels, rng, dtype)]
    norm = _norm(kind, (channels, side, side), 1, backend, dtype)
    if norm is not None:
        modules.append(norm)
    modules += [
        ReLU(),
        AvgPool2(),
        Flatten(),
        Dense(channels * (side // 2) ** 2, classes, rng, dtype),
    ]
    return Sequential(*modules)


def softmax_cross_entropy(logits, labels):
    """(mean loss, dL/dlogits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -float(log_probs[np.arange(n), labels].mean())
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


class SGD:
    """SGD with momentum, state kept per parameter array."""

    def __init__(self, model, lr: float, momentum: float = 0.9) -> None:
        self.model, self.lr, self.momentum = model, lr, momentum
        self.velocity = {}

    def step(self) -> None:
        for name, param, grad in self.model.params_and_grads():
            v = self.velocity.get(name)
            if v is None:
                v = self.velocity[name] = np.zeros_like(param)
            v *= self.momentum
            v -= self.lr * grad
            param += v


# --- the experiment --------------------------------------------------------------------------


@dataclass
class Run:
    model: str
    variant: str
    batch_size: int
    backend: str
    epoch_loss: list = field(default_factory=list)  # mean training loss per epoch
    val_accuracy: float = 0.0  # eval mode (BatchNorm: running statistics)
    val_accuracy_train_mode: float | None = None  # BatchNorm with per-batch statistics
    seconds_per_epoch: float = 0.0


def load_data(seed: int, dtype=np.float32):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(dtype)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def _shape_input(model_name: str, x):
    return x.reshape(-1, 1, 8, 8) if model_name == "cnn" else x


def _accuracy(model, model_name, x, y, batch_size):
    correct = total = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        if len(xb) < 2 and model.training:
            continue  # a batch of one has no batch statistics
        logits = model(_shape_input(model_name, xb))
        correct += int((logits.argmax(axis=1) == y[i : i + batch_size]).sum())
        total += len(xb)
    return correct / max(total, 1)


def train_one(model_name, variant, batch_size, backend, data, epochs, seed, lr, progress):
    (x_train, y_train), (x_val, y_val) = data
    rng = np.random.default_rng(seed)
    build = make_cnn if model_name == "cnn" else make_mlp
    model = build(variant, rng, backend=backend)
    opt = SGD(model, lr=lr)
    run = Run(model_name, variant, batch_size, backend)
    order_rng = np.random.default_rng(seed + 1)
    elapsed = 0.0
    for _ in range(epochs):
        model.train()
        order = order_rng.permutation(len(x_train))
        n_full = len(order) - len(order) % batch_size  # equal batches: BatchNorm needs >= 2
        losses = []
        t0 = time.perf_counter()
        for i in range(0, n_full, batch_size):
            idx = order[i : i + batch_size]
            logits = model(_shape_input(model_name, x_train[idx]))
            loss, grad = softmax_cross_entropy(logits, y_train[idx])
            model.backward(grad)
            opt.step()
            losses.append(loss)
            progress.update(1)
        elapsed += time.perf_counter() - t0
        run.epoch_loss.append(float(np.mean(losses)))
    run.seconds_per_epoch = elapsed / epochs
    model.eval()
    run.val_accuracy = _accuracy(model, model_name, x_val, y_val, 256)
    if variant == "batchnorm":
        model.train()
        run.val_accuracy_train_mode = _accuracy(model, model_name, x_val, y_val, batch_size)
    return run


def run_experiment(args) -> dict:
    from tqdm import tqdm

    backends = ["normkit", "numpy"] if args.backend == "numpy" else ["normkit"]
    data = load_data(args.seed)
    n_train = len(data[0][0])
    jobs = [
        (m, v, b, be)
        for be in backends
        for m in args.models
        for b in args.batch_sizes
        for v in VARIANTS
    ]
    steps = sum(args.epochs * (n_train // b) for _, _, b, _ in jobs)
    runs = []
    with tqdm(
        total=steps, desc="training", unit="step", file=sys.stderr, disable=args.no_progress
    ) as progress:
        for model_name, variant, batch_size, backend in jobs:
            progress.set_postfix_str(f"{backend} {model_name} {variant} batch={batch_size}")
            runs.append(
                train_one(
                    model_name,
                    variant,
                    batch_size,
                    backend,
                    data,
                    args.epochs,
                    args.seed,
                    args.lr,
                    progress,
                )
            )
    return {
        "config": {
            "models": args.models,
            "batch_sizes": args.batch_sizes,
            "epochs": args.epochs,
            "lr": args.lr,
            "seed": args.seed,
            "backends": backends,
            "normkit_threads": args.threads,
            "train_samples": n_train,
            "val_samples": len(data[1][0]),
        },
        "environment": {
            "normkit": normkit.info(),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "runs": [asdict(r) for r in runs],
    }


def format_table(record: dict) -> str:
    runs = record["runs"]
    by_key = {(r["model"], r["variant"], r["batch_size"], r["backend"]): r for r in runs}
    has_numpy = "numpy" in record["config"]["backends"]
    head = (
        f"{'model':<5} {'variant':<18} {'batch':>5} {'val acc':>8} {'acc (BN train-mode)':>20}"
        f" {'final loss':>10} {'s/epoch':>8}"
    )
    if has_numpy:
        head += f" {'numpy s/epoch':>13} {'speed-up':>8} {'numpy val acc':>13}"
    lines = [head, "-" * len(head)]
    for r in runs:
        if r["backend"] != "normkit":
            continue
        train_mode = r["val_accuracy_train_mode"]
        line = (
            f"{r['model']:<5} {LABELS[r['variant']]:<18} {r['batch_size']:>5} "
            f"{r['val_accuracy']:>8.3f} "
            f"{'' if train_mode is None else format(train_mode, '.3f'):>20} "
            f"{r['epoch_loss'][-1]:>10.4f} {r['seconds_per_epoch']:>8.3f}"
        )
        if has_numpy:
            ref = by_key[(r["model"], r["variant"], r["batch_size"], "numpy")]
            line += (
                f" {ref['seconds_per_epoch']:>13.3f} "
                f"{ref['seconds_per_epoch'] / r['seconds_per_epoch']:>7.2f}x "
                f"{ref['val_accuracy']:>13.3f}"
            )
        lines.append(line)
    return "\n".join(lines)


def plot(record: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in record["runs"] if r["backend"] == "normkit"]
    models = record["config"]["models"]
    sizes = record["config"]["batch_sizes"]
    curve_batch = 32 if 32 in sizes else sizes[len(sizes) // 2]
    colors = {"none": "tab:gray", "batchnorm": "tab:blue", "layernorm": "tab:orange"}
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        ax = axes[row][0]
        for v in VARIANTS:
            r = next(
                r
                for r in runs
                if (r["model"], r["variant"], r["batch_size"]) == (model, v, curve_batch)
            )
            ax.plot(
                range(1, len(r["epoch_loss"]) + 1),
                r["epoch_loss"],
                marker="o",
                color=colors[v],
                label=LABELS[v],
            )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (cross-entropy)")
        ax.set_title(f"{model.upper()}: training loss, batch size {curve_batch}")
        ax.legend()
        ax.grid(alpha=0.3)

        ax = axes[row][1]
        for v in VARIANTS:
            acc = [
                next(
                    r for r in runs if (r["model"], r["variant"], r["batch_size"]) == (model, v, b)
                )["val_accuracy"]
                for b in sizes
            ]
            ax.plot(sizes, acc, marker="o", color=colors[v], label=f"{LABELS[v]} (eval mode)")
        bn_train = [
            next(
                r
                for r in runs
                if (r["model"], r["variant"], r["batch_size"]) == (model, "batchnorm", b)
            )["val_accuracy_train_mode"]
            for b in sizes
        ]
        ax.plot(
            sizes,
            bn_train,
            marker="s",
            linestyle="--",
            color=colors["batchnorm"],
            label="BatchNorm, batch statistics at test time",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{model.upper()}: accuracy vs batch size")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"normkit compare: digits, {record['config']['epochs']} epochs, "
        f"SGD lr={record['config']['lr']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="fewer epochs (a smoke run: under 30 s on 2 cores)"
    )
    parser.add_argument(
        "--out",
        default="normkit-compare",
        help="folder for compare.png and compare.json (default ./normkit-compare)",
    )
    parser.add_argument(
        "--backend",
        choices=["normkit", "numpy"],
        default="normkit",
        help="numpy: also run the NumPy reference layers and compare times",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 15, quick 2)")
    parser.add_argument(
        "--batch-sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[2, 8, 32, 128],
        help="comma-separated (default 2,8,32,128)",
    )
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=["mlp", "cnn"],
        help="comma-separated: mlp, cnn (default both)",
    )
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="normkit threads (default 1: these arrays are too small to gain from more)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    if args.epochs is None:
        args.epochs = 2 if args.quick else 15
    if any(b < 2 for b in args.batch_sizes):
        raise SystemExit("batch sizes must be >= 2 (BatchNorm needs two values per channel)")
    os.makedirs(args.out, exist_ok=True)
    threads_before = normkit.get_num_threads()
    normkit.set_num_threads(args.threads)
    try:
        record = run_experiment(args)
    finally:
        normkit.set_num_threads(threads_before)
    table = format_table(record)
    print(table)
    json_path = os.path.join(args.out, "compare.json")
    png_path = os.path.join(args.out, "compare.png")
    record["table"] = table
    with open(json_path, "w") as f:
        json.dump(record, f, indent=1)
    plot(record, png_path)
    print(f"\nwrote {png_path} and {json_path}")
    return 0
