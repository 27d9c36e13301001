"""The benchmark's outputs: a table on the terminal, JSON and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

COLORS = {
    "examq": "#1f77b4",
    "plain_sql": "#7f7f7f",
    "pgqueuer": "#2ca02c",
    "procrastinate": "#d62728",
}


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write results.json and results.png (plus time-stamped copies); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["date"].replace(":", "").replace("-", "")[:15]
    kind = "quick" if results["meta"]["quick"] else "full"
    json_path = out_dir / f"bench-{kind}-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    png_path = out_dir / f"bench-{kind}-{stamp}.png"
    plot(results, png_path)
    latest_json = out_dir / f"latest-{kind}.json"
    latest_json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    latest_png = out_dir / f"latest-{kind}.png"
    latest_png.write_bytes(png_path.read_bytes())
    return [json_path, png_path, latest_json, latest_png]


def _label(row: dict[str, Any]) -> str:
    work = "no-op" if row["work_ms"] == 0 else f"{row['work_ms']:g} ms"
    via = "" if row["transport"] == "direct" else " HTTP"
    return f"{work}, {row['procs']} proc{'s' if row['procs'] > 1 else ''}{via}"


def best_rows(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The best run of each (workload label, system)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in results["processing"]:
        key = (_label(row), row["system"])
        if key not in out or row["rate"] > out[key]["rate"]:
            out[key] = row
    return out


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    """The results as tables: processing, enqueue, latency, claim growth, fairness."""
    console = console or Console()
    systems = list(
        dict.fromkeys(r["system"] for r in results["processing"] + results["enqueue"])
    )
    best = best_rows(results)

    table = Table(title="Processing rate, jobs/s (best batch size; ratio to examq)")
    table.add_column("workload")
    for name in systems:
        table.add_column(name, justify="right")
    for label in dict.fromkeys(k[0] for k in best):
        ours = best.get((label, "examq"))
        cells = []
        for name in systems:
            row = best.get((label, name))
            if row is None:
                cells.append("-")
                continue
            ratio = (
                f" ({row['rate'] / ours['rate']:.2f}x)"
                if ours and ours["rate"] and name != "examq"
                else ""
            )
            batch = f" b{row['batch']}"
            cells.append(f"{row['rate']:,.0f}{batch}{ratio}")
        table.add_row(label, *cells)
    console.print(table)

    detail = Table(title="No-op jobs, 4 processes, by batch size (jobs/s)")
    detail.add_column("system")
    detail.add_column("batch", justify="right")
    detail.add_column("rate", justify="right")
    for row in results["processing"]:
        if row["procs"] == 4 and row["work_ms"] == 0 and row["transport"] == "direct":
            detail.add_row(row["system"], str(row["batch"]), f"{row['rate']:,.0f}")
    console.print(detail)

    if results["enqueue"]:
        enq = Table(title="Enqueue rate, jobs/s (ratio to examq)")
        enq.add_column("system")
        enq.add_column("one per call", justify="right")
        enq.add_column("bulk (1,000 per call)", justify="right")
        ours = next((r for r in results["enqueue"] if r["system"] == "examq"), None)
        for row in results["enqueue"]:
            rs = (
                f" ({row['single'] / ours['single']:.2f}x)"
                if ours and row is not ours
                else ""
            )
            rb = (
                f" ({row['bulk'] / ours['bulk']:.2f}x)"
                if ours and row is not ours
                else ""
            )
            enq.add_row(
                row["system"], f"{row['single']:,.0f}{rs}", f"{row['bulk']:,.0f}{rb}"
            )
        console.print(enq)

    if results["latency"]:
        lat = Table(title="Enqueue-to-start latency at a steady offered load, ms")
        for col in ("system", "offered/s", "p50", "p95", "p99", "max"):
            lat.add_column(col, justify="right" if col != "system" else "left")
        for row in results["latency"]:
            lat.add_row(
                row["system"],
                f"{row['offered_per_second']:g}",
                *(
                    "-" if row[k] is None else f"{row[k]:.1f}"
                    for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
                ),
            )
        console.print(lat)

    if results["growth"]:
        gro = Table(
            title="Claim latency as the table grows (queued + as many finished), ms"
        )
        gro.add_column("system")
        sizes = sorted({r["queued"] for r in results["growth"]})
        for size in sizes:
            gro.add_column(f"{size:,} p50 / p95", justify="right")
        for name in dict.fromkeys(r["system"] for r in results["growth"]):
            cells = []
            for size in sizes:
                row = next(
                    (
                        r
                        for r in results["growth"]
                        if r["system"] == name and r["queued"] == size
                    ),
                    None,
                )
                cells.append(
                    "-" if row is None else f"{row['p50_ms']:.2f} / {row['p95_ms']:.2f}"
                )
            gro.add_row(name, *cells)
        console.print(gro)

    fair = results.get("fairness")
    if fair:
        ft = Table(
            title=(
                f"examq fairness under saturation: 10 ms jobs offered at {fair['offered_per_second']:g}/s "
                f"for {fair['seconds']:g} s to 4 workers (wait = first start - enqueue, s)"
            )
        )
        for col in ("tier", "jobs", "p50", "p95", "p99", "max"):
            ft.add_column(col, justify="right" if col != "tier" else "left")
        for tier, row in fair["tiers"].items():
            ft.add_row(
                tier,
                str(row["jobs"]),
                *(f"{row[k]:.2f}" for k in ("p50_s", "p95_s", "p99_s", "max_s")),
            )
        console.print(ft)

    if results.get("ratios"):
        console.print("ratios: " + json.dumps(results["ratios"], indent=1))


def plot(results: dict[str, Any], path: Path) -> None:
    """Four panels: processing rates, enqueue rates, latency percentiles, claim growth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    best = best_rows(results)
    labels = list(dict.fromkeys(k[0] for k in best))
    systems = list(dict.fromkeys(k[1] for k in best))
    ax = axes[0][0]
    width = 0.8 / max(1, len(systems))
    for i, name in enumerate(systems):
        xs = [j + i * width for j in range(len(labels))]
        ys = [best.get((label, name), {}).get("rate", 0) for label in labels]
        ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("jobs/s (log)")
    ax.set_title("Processing rate (best batch size)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    enq = results["enqueue"]
    if enq:
        names = [r["system"] for r in enq]
        xs = range(len(names))
        ax.bar(
            [x - 0.2 for x in xs],
            [r["single"] for r in enq],
            0.4,
            label="one per call",
            color="#9467bd",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r["bulk"] for r in enq],
            0.4,
            label="bulk, 1,000 per call",
            color="#ff7f0e",
        )
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names)
        ax.set_yscale("log")
        ax.set_ylabel("jobs/s (log)")
        ax.set_title("Enqueue rate")
        ax.legend(fontsize=8)

    ax = axes[1][0]
    lat = results["latency"]
    if lat:
        names = [r["system"] for r in lat]
        for k, (key, color) in enumerate(
            (("p50_ms", "#17becf"), ("p95_ms", "#bcbd22"), ("p99_ms", "#e377c2"))
        ):
            ax.bar(
                [x + (k - 1) * 0.27 for x in range(len(names))],
                [r[key] or 0 for r in lat],
                0.27,
                label=key.replace("_ms", ""),
                color=color,
            )
        ax.set_xticks(list(range(len(names))))
        ax.set_xticklabels(names)
        ax.set_ylabel("ms")
        ax.set_title(
            f"Enqueue-to-start latency at {lat[0]['offered_per_second']:g} jobs/s offered"
        )
        ax.legend(fontsize=8)

    ax = axes[1][1]
    growth = results["growth"]
    if growth:
        for name in dict.fromkeys(r["system"] for r in growth):
            rows = sorted(
                (r for r in growth if r["system"] == name), key=lambda r: r["queued"]
            )
            ax.plot(
                [r["queued"] for r in rows],
                [r["p50_ms"] for r in rows],
                marker="o",
                label=name,
                color=COLORS.get(name),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("queued jobs (plus as many finished)")
        ax.set_ylabel("claim p50, ms (log)")
        ax.set_title("Claim latency as the table grows")
        ax.legend(fontsize=8)

    meta = results["meta"]
    fig.suptitle(
        f"examq benchmark ({'quick' if meta['quick'] else 'full'}), PostgreSQL {meta['server']}, "
        f"{meta['cpus']} CPUs shared, {meta['date']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
