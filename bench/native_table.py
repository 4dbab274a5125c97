"""Markdown table from ``normkit_bench --benchmark_format=json``: one row per kernel, shape and
thread count, normkit (one ISA) beside its oneDNN twin when there is one; "(inputs +16 B)" rows
ran on inputs 16 bytes past a cache line, where NumPy's large arrays start. With repetitions
(``--benchmark_repetitions=N``), every number is the median over them.

    normkit_bench --benchmark_format=json > native.json
    python bench/native_table.py native.json [--isa avx512] [--dtype f32]
"""

import argparse
import json
import math


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--isa", default=None, help="normkit ISA to show (default: the best)")
    parser.add_argument("--dtype", default="f32")
    args = parser.parse_args()
    with open(args.json_file) as f:
        data = json.load(f)
    isa = args.isa or data["context"]["normkit_isa_available"].split(",")[-1]
    # Repeated runs also write aggregates: keep the medians (their counters are medians too).
    repeated = any(b.get("run_type") == "aggregate" for b in data["benchmarks"])
    rows = {}
    # Registration order (interleaved repetitions come out shuffled).
    benchmarks = sorted(data["benchmarks"], key=lambda b: b.get("family_index", 0))
    for b in benchmarks:
        if repeated and b.get("aggregate_name") != "median":
            continue
        # kernel/dtype/impl/threads:N/shape[/in+16B]/real_time[_median]
        parts = b["name"].split("/")
        kernel, dtype, impl, threads = parts[:4]
        shape = "/".join(parts[4:-1]).replace("/in+16B", " (inputs +16 B)")
        if dtype != args.dtype or impl not in (isa, "onednn"):
            continue
        rows.setdefault((kernel, shape, threads), {})[impl] = b
    ctx = data["context"]
    print(
        f"{ctx['date'][:10]}, {ctx['num_cpus']} CPUs at {ctx['mhz_per_cpu']} MHz, "
        f"normkit {isa}, {args.dtype}\n"
    )
    print(
        "| kernel | shape | threads | normkit ms | GB/s | % of copy | % of two-pass "
        "| oneDNN ms | vs oneDNN |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for (kernel, shape, threads), r in rows.items():
        nk, od = r.get(isa), r.get("onednn")
        if nk is None:
            continue
        cells = [
            kernel,
            shape,
            threads.split(":")[1],
            f"{nk['real_time']:.3f}",
            f"{nk['GB/s']:.1f}",
            f"{nk['pct_of_copy']:.0f}%",
            f"{nk['pct_of_two_pass']:.0f}%" if "pct_of_two_pass" in nk else "",
        ]
        if od is not None:
            ratio = od["real_time"] / nk["real_time"]
            ratios.append(ratio)
            cells += [f"{od['real_time']:.3f}", f"{ratio:.2f}x"]
        else:
            cells += ["", ""]
        print("| " + " | ".join(cells) + " |")
    if ratios:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        slower = sum(r < 1 for r in ratios)
        print(
            f"\nGeometric-mean speed-up over oneDNN: {geo:.2f}x; slower than oneDNN in "
            f"{slower} of {len(ratios)} cases."
        )


if __name__ == "__main__":
    main()
