"""Summaries of multirun sweeps, built from the files on disk.

    python -m framework -m seed=0,1,2,3,4            # the summary is written when the sweep ends
    python -m framework -m seed=0,1,2 repeat=0,1     # also checks that every seed reproduces
    python -m framework.sweep SWEEP_DIR              # (re)build it from disk, whatever ran the jobs

Writes at the sweep root: summary.json, summary.md (per metric n, mean, std, min, max and a 95%
confidence interval; a row per run with its seed, final metrics and fingerprint) and
val_curves.png (the validation curves of every seed, with their mean and spread). The metrics are
the ones the runs' tasks report, as their records name them with their directions (`task` in
metrics.json): test/ then val/ then train/loss; the curves are the first CURVE_PANELS val/ ones.

A sweep over other keys too (`-m optimizer.lr=0.02,0.1 seed=0,1`) is summarized per
configuration: the runs that share every swept value but `seed` and `repeat`. Each configuration
gets its own statistics and band of curves, and the keys that differ between configurations are
columns of both tables; nothing is pooled across configurations.

Every job leaves its own record (metrics.json with its status), so a sweep whose jobs failed,
were killed, or ran under any launcher is summarized the same way. A job refused because its
directory holds another run (or a live process) cannot write there: it leaves its record at the
sweep's root (`.refused/`, cleared when the next multirun of that directory starts). Runs that
differ only in `repeat` are repeats: the summary says per seed whether all of them have one
fingerprint. Exit status of the command (and of the sweep, through SummaryCallback): 1 when a
job failed or was refused or a seed did not reproduce, 0 otherwise; 128 + N when signal N
stopped the sweep.

A stop signal stops the whole sweep: the job that trains stops at a step with a checkpoint, no
more jobs start, the summary is written, and the sweep exits as the signal would have it. That
holds between two jobs too, and for a parallel launcher whose main process alone is signalled: it
passes the signal to its workers (StopBetweenJobs). The signal is noted at the sweep's root
(`.stopped`) for every process of the sweep to see.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
from pathlib import Path

import yaml

from framework.atomic import replace_atomically, write_json_atomic
from framework.config.overrides import OverridesParser, without
from framework.runs import layout
from framework.runs.layout import REFUSED, STOPPED_BY
from framework.runs.record import recorded_metrics
from framework.runs.reproducibility import why_runs_differ

# The validation metrics val_curves.png plots, at most: the task's first (a panel each).
CURVE_PANELS = 4

# The order of the summary's metrics: a test result first, the loss the run trained on last.
SPLIT_ORDER = ("test/", "val/", "train/")

# How summary.md says a direction.
BETTER = {"min": "lower", "max": "higher"}


# Jobs a signal stopped with a checkpoint: not failed, not done.
STOPPED = ("preempted", "interrupted")


# ---- what a job leaves at the sweep's root ------------------------------------------------
def record_refusal(sweep_dir: Path, job_num: int, run_dir: Path, seed: object, overrides: list, reason: str) -> None:
    """A job refused a directory that is another run's: its record, where the summary finds it."""
    record = {"dir": str(run_dir), "seed": seed, "overrides": overrides, "error": reason}
    folder = sweep_dir / REFUSED
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"job_{job_num}.json", record)


def refused_jobs(sweep_dir: Path) -> list[dict]:
    """The records of the last multirun's refused jobs, in job order, as the summary lists jobs."""
    jobs = []
    for path in sorted((sweep_dir / REFUSED).glob("job_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        try:
            refused = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        record = empty_record(str(refused.get("dir")))
        record.update(status="refused", **{k: refused.get(k) for k in ("seed", "overrides", "error")})
        jobs.append(record)
    return jobs


def request_stop(sweep_dir: Path, signum: int) -> None:
    """Note at the sweep's root that signal `signum` stops the sweep: no more jobs start."""
    replace_atomically(sweep_dir / STOPPED_BY, signal.Signals(signum).name + "\n", durable=False)


def stop_requested(sweep_dir: Path) -> signal.Signals | None:
    """The signal that stopped the sweep, or None."""
    try:
        return signal.Signals[(sweep_dir / STOPPED_BY).read_text().strip()]
    except (OSError, KeyError):
        return None


# ---- reading the jobs --------------------------------------------------------------------
def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory of the sweep: the ones Hydra made (with .hydra/), in job order."""
    # A resumed job keeps its later Hydra records in .hydra/resume-*/: those are not jobs.
    found = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == layout.HYDRA}
    found.discard(sweep_dir)
    return sorted(found, key=lambda d: (len(d.parts), int(d.name) if d.name.isdigit() else 0, str(d)))


def empty_record(job_dir: str) -> dict:
    return {
        "dir": job_dir,
        "overrides": [],
        "status": "failed",
        "seed": None,
        "repeat": 0,
        "metrics": {},
        "fingerprint": None,
        "error": None,
        "curve": [],
        "optimized_metric": None,
        "directions": {},
    }


def read_job(job: Path) -> dict:
    record = empty_record(str(job))
    record["overrides"] = yaml.safe_load((layout.RunLayout(job).hydra / "overrides.yaml").read_text()) or []
    config_file = layout.RunLayout(job).hydra / "config.yaml"
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
        record["seed"], record["repeat"] = config.get("seed"), config.get("repeat", 0)
    try:
        summary = json.loads(layout.RunLayout(job).record.read_text())
    except (OSError, ValueError):
        record["error"] = f"no {layout.RECORD}: the job failed before training started (see {job / 'train.log'})"
        return record
    record["settings"] = {k: summary.get(k) for k in ("determinism", "device", "meta")}
    record.update(
        status=summary.get("status", "failed"),
        seed=summary.get("seed", record["seed"]),
        metrics=summary.get("metrics", {}),
        fingerprint=summary.get("fingerprint"),
        error=summary.get("error"),
        optimized_metric=summary.get("optimized_metric"),
        directions=recorded_metrics(summary),
    )
    if record["status"] == "running":
        record["status"] = "failed"  # killed: it never wrote an end
        record["error"] = record["error"] or "the job never finished (killed?)"
    if record["status"] in STOPPED:
        record["error"] = f"{record['status']} at step {summary.get('global_step')}: continue with resume=auto"
    try:
        lines = [json.loads(line) for line in layout.RunLayout(job).history.read_text().splitlines()]
        # A point per epoch: its number (from 1) and its validation metrics.
        record["curve"] = [
            {"epoch": r["epoch"] + 1, **{k: v for k, v in r.items() if k.startswith("val/")}}
            for r in lines
            if r["event"] == "epoch"
        ]
    except (OSError, ValueError):
        pass
    return record


# ---- statistics --------------------------------------------------------------------------
def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with df degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def statistics_of(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "min": min(values),
        "max": max(values),
        "ci95_low": mean - half,
        "ci95_high": mean + half,
    }


def reported_metrics(runs: list[dict]) -> dict[str, str]:
    """Every metric the runs' records say their tasks report, with its direction ("min" or "max"):
    test/ then val/ then train/, each in its task's declared order, over the runs in job order."""
    found: dict[str, str] = {}
    for prefix in SPLIT_ORDER:
        for r in runs:
            for name, direction in r["directions"].items():
                if name.startswith(prefix):
                    found.setdefault(name, direction)
    return found


def group_key(record: dict) -> tuple:
    """Runs with the same overrides but for `repeat` are repeats of one seed of a configuration."""
    return tuple(sorted(without(record["overrides"], "repeat")))


# What varies within a configuration: its seeds and their repeats.
WITHIN_A_CONFIGURATION = ("seed", "repeat")


def configuration_key(record: dict) -> tuple:
    """Runs with the same overrides but for `seed` and `repeat` train one configuration."""
    lines = record["overrides"]
    for key in WITHIN_A_CONFIGURATION:
        lines = without(lines, key)
    return tuple(sorted(lines))


def settings_of(lines: tuple | list) -> dict[str, str]:
    """Override lines as key -> value text (`optimizer.lr=0.02` -> {"optimizer.lr": "0.02"})."""
    return {
        o.key_or_group: o.input_line.split("=", 1)[1] if "=" in o.input_line else "(deleted)"
        for o in OverridesParser.create().parse_overrides(list(lines))
    }


def swept_keys(keys: list[tuple]) -> list[str]:
    """The keys whose values differ between the configurations (`keys`: configuration_key's)."""
    settings = [settings_of(k) for k in keys]
    names = list(dict.fromkeys(name for s in settings for name in s))
    return [n for n in names if len({s.get(n) for s in settings}) > 1]


def configurations_of(runs: list[dict], metrics: dict[str, str]) -> list[dict]:
    """The sweep's configurations in job order: their swept values, runs and statistics over seeds
    (one run a seed: identical repeats must not shrink the interval). Marks each run with its
    configuration's label."""
    by_key: dict[tuple, list[dict]] = {}
    for r in runs:
        by_key.setdefault(configuration_key(r), []).append(r)
    swept = swept_keys(list(by_key))
    found = []
    for key, members in by_key.items():
        values = {k: settings_of(key).get(k, "(default)") for k in swept}
        label = " ".join(f"{k}={v}" for k, v in values.items()) or "every run"
        seeds: dict[tuple, dict] = {}
        for r in members:
            r["configuration"] = label
            if r["status"] == "completed":
                seeds.setdefault(group_key(r), r)
        firsts = list(seeds.values())
        found.append(
            {
                "label": label,
                "swept": values,
                "overrides": list(key),
                "jobs": len(members),
                "completed": sum(r["status"] == "completed" for r in members),
                "seeds": sorted({r["seed"] for r in firsts if r["seed"] is not None}),
                "metrics": statistics_by_metric(firsts, metrics),
            }
        )
    return found


def statistics_by_metric(runs: list[dict], metrics: dict[str, str]) -> dict:
    """Per metric (`metrics`: reported_metrics'), its statistics over the runs that have it, its
    direction, and the best value by it."""
    found = {}
    for name, direction in metrics.items():
        values = [r["metrics"][name] for r in runs if name in r["metrics"]]
        if values:
            best = max(values) if direction == "max" else min(values)
            found[name] = {**statistics_of(values), "direction": direction, "best": best}
    return found


def differing_metrics(runs: list[dict], metrics: dict[str, str]) -> list[str]:
    """The final metrics (whichever the task reports) whose values are not the same bits in
    every run, in the order of `metrics` (reported_metrics'); a metric one run lacks differs too.
    NaN equals NaN here: the same result."""
    names = dict.fromkeys([*metrics, *(name for r in runs for name in r["metrics"])])
    return [name for name in names if len({repr(r["metrics"].get(name)) for r in runs}) > 1]


# ---- the summary -------------------------------------------------------------------------
# What summary.json says of each run.
RUN_FIELDS = ("dir", "configuration", "seed", "repeat", "status", "metrics", "fingerprint", "error", "overrides")


def summarize(sweep_dir: Path) -> dict:
    sweep_dir = Path(sweep_dir)
    runs = [read_job(d) for d in job_dirs(sweep_dir)] + refused_jobs(sweep_dir)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(group_key(r), []).append(r)
    metrics = reported_metrics(runs)
    configurations = configurations_of(runs, metrics)
    # Statistics of the whole sweep only where it is one configuration: never pooled across several.
    stats = configurations[0]["metrics"] if len(configurations) == 1 else {}

    repeated = {k: g for k, g in groups.items() if len(g) > 1}
    reproducibility = []
    for key, g in repeated.items():
        prints = [r["fingerprint"] for r in g]
        differing = differing_metrics(g, metrics)
        reproduces = all(r["status"] == "completed" for r in g) and len(set(prints)) == 1 and not differing
        reproducibility.append(
            {
                "seed": g[0]["seed"],
                "configuration": g[0]["configuration"],
                "overrides": list(key),
                "runs": len(g),
                "fingerprints": prints,
                "differing_metrics": differing,
                "reproduces": reproduces,
                # What the runs' records say could explain it (a thread count, a GPU under seeded).
                "possible_causes": [] if reproduces else why_runs_differ([r.get("settings") or {} for r in g]),
            }
        )
    failed = [r for r in runs if r["status"] not in ("completed", "refused", *STOPPED)]
    stopped = [r for r in runs if r["status"] in STOPPED]
    refused = [r for r in runs if r["status"] == "refused"]
    stopped_by = stop_requested(sweep_dir)
    summary = {
        "sweep_dir": str(sweep_dir),
        "jobs": len(runs),
        "completed": len(runs) - len(failed) - len(stopped) - len(refused),
        "failed": len(failed),
        "refused": len(refused),
        "stopped": len(stopped),
        "stopped_by": stopped_by.name if stopped_by else None,
        "metrics": stats,
        "directions": metrics,
        "configurations": configurations,
        "swept": list(configurations[0]["swept"]) if configurations else [],
        "reproducibility_checked": bool(repeated),
        "reproducibility": reproducibility,
        "all_reproduce": all(r["reproduces"] for r in reproducibility) if repeated else None,
        "best": best_result(sweep_dir, runs, metrics),
        "runs": [{k: r[k] for k in RUN_FIELDS} for r in runs],
    }
    # Whole files or none, like every file the framework writes: a reader never sees half a summary.
    write_json_atomic(sweep_dir / "summary.json", summary)
    replace_atomically(sweep_dir / "summary.md", markdown(summary))
    plot_curves(runs, sweep_dir / "val_curves.png", curve_metrics(metrics))
    return summary


def curve_metrics(metrics: dict[str, str]) -> list[str]:
    """The validation metrics val_curves.png plots: the first CURVE_PANELS of the tasks'."""
    return [name for name in metrics if name.startswith("val/")][:CURVE_PANELS]


def best_result(sweep_dir: Path, runs: list[dict], metrics: dict[str, str]) -> dict | None:
    """What a sweeper that optimizes found (Optuna writes optimization_results.yaml when its
    study ends): the best value, its parameters, which metric it is and its direction."""
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return None
    found = yaml.safe_load(results.read_text()) or {}
    if "best_value" not in found:
        return None  # a study with several objectives: its Pareto front is in that file
    metric = next((r["optimized_metric"] for r in runs if r["optimized_metric"]), None)
    return {
        "metric": metric,
        "direction": metrics.get(metric),
        "value": found["best_value"],
        "params": found.get("best_params", {}),
    }


def markdown(s: dict) -> str:
    out = [
        f"# Sweep summary: {s['sweep_dir']}",
        "",
        f"{s['jobs']} jobs: {s['completed']} completed, {s['failed']} failed, {s.get('refused', 0)} refused, "
        f"{s['stopped']} stopped by a signal.",
        "",
    ]
    # A block of rows per configuration, led by its swept values (none: one configuration).
    swept, configurations = s["swept"], s["configurations"]
    values_of = {c["label"]: c["swept"] for c in configurations}
    if any(c["metrics"] for c in configurations):
        out += [
            "| " + "".join(f"{k} | " for k in swept) + "metric | n | mean | std | min | max | 95% CI |",
            "|" + "---|" * len(swept) + "---|---:|---:|---:|---:|---:|---|",
        ]
        for c in configurations:
            keys = "".join(f"{c['swept'][k]} | " for k in swept)
            for name, d in c["metrics"].items():
                ci = "n/a" if d["n"] < 2 else f"[{d['ci95_low']:.4f}, {d['ci95_high']:.4f}]"
                out.append(
                    f"| {keys}{name} | {d['n']} | {d['mean']:.4f} | {d['std']:.4f} | {d['min']:.4f} | {d['max']:.4f} "
                    f"| {ci} |"
                )
        out.append("")
    metrics = s["directions"]
    ways = {way: [m for m, d in metrics.items() if BETTER.get(d) == way] for way in BETTER.values()}
    if metrics:
        out += ["Better: " + "; ".join(f"{way} for {', '.join(names)}" for way, names in ways.items() if names), ""]
    columns = "".join(f"{k} | " for k in swept)
    out += [
        f"| run | {columns}seed | repeat | status | " + "".join(f"{m} | " for m in metrics) + "fingerprint |",
        "|---|" + "---|" * len(swept) + "---:|---:|---|" + "---:|" * len(metrics) + "---|",
    ]
    for r in s["runs"]:
        keys = "".join(f"{values_of[r['configuration']][k]} | " for k in swept)
        values = "".join(f"{r['metrics'][m]:.4f} | " if m in r["metrics"] else " | " for m in metrics)
        fp = (r["fingerprint"] or "")[:16]
        out.append(f"| {Path(r['dir']).name} | {keys}{r['seed']} | {r['repeat']} | {r['status']} | {values}{fp} |")
    for title, statuses in (("Failed jobs:", ("failed",)), ("Refused jobs:", ("refused",)), ("Stopped jobs:", STOPPED)):
        listed = [r for r in s["runs"] if r["status"] in statuses]
        if listed:
            out += ["", title] + [f"- {Path(r['dir']).name} (seed {r['seed']}): {r['error']}" for r in listed]
    if s.get("best"):
        b = s["best"]
        params = " ".join(f"{k}={v}" for k, v in b["params"].items())
        better = f" ({BETTER[b['direction']]} is better)" if b.get("direction") in BETTER else ""
        out += ["", f"Best {b['metric'] or 'value'}{better}: {b['value']} with {params}"]
    if s["reproducibility_checked"]:
        verdict = "every seed reproduces" if s["all_reproduce"] else "NOT every seed reproduces"
        out += [
            "",
            f"Reproducibility: {verdict}.",
            "",
            "| seed | other overrides | runs | identical fingerprints and metrics |",
            "|---:|---|---:|---|",
        ]
        for r in s["reproducibility"]:
            others = " ".join(without(r["overrides"], "seed")) or "(none)"
            differ = r.get("differing_metrics") or []
            same = "yes" if r["reproduces"] else "NO" + (f" ({', '.join(differ)} differ)" if differ else "")
            out.append(f"| {r['seed']} | {others} | {r['runs']} | {same} |")
        causes = [(r["seed"], c) for r in s["reproducibility"] for c in r["possible_causes"]]
        if causes:
            out += ["", "Possible causes, from the runs' records:"] + [f"- seed {seed}: {c}" for seed, c in causes]
    return "\n".join(out) + "\n"


def plot_curves(runs: list[dict], path: Path, names: list[str]) -> list[str]:
    """The validation metrics `names` by epoch, a panel each: of one configuration, every seed
    with their mean and spread; of several, a mean and band per configuration, labelled by it
    (its seeds faint, in its colour). Returns the legend's labels."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_configuration: dict[str, list[dict]] = {}
    for r in runs:
        by_configuration.setdefault(r["configuration"], []).append(r)
    several = len(by_configuration) > 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # A run without a record (it failed first) has no metrics: one empty panel says so.
    names = names or ["no validation metrics"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    axes = list(axes[0])
    for ax, name in zip(axes, names):
        for number, (label, members) in enumerate(by_configuration.items()):
            if several:
                plot_band(ax, members, name, colours[number % len(colours)], label, seeds_labelled=False)
            else:
                plot_band(ax, members, name, "black", "mean", seeds_labelled=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    labels = axes[-1].get_legend_handles_labels()[1]
    if labels:  # not when no job got as far as an epoch
        axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_name(layout.temporary(path.name, ".png"))
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return labels


def plot_band(ax, runs: list[dict], name: str, colour: str, label: str, seeds_labelled: bool) -> None:
    """The runs' curves of metric `name` (faint; each labelled by its seed, or not), their mean
    labelled `label` in `colour`, and the mean ± std around it."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        points = [(p["epoch"], p[name]) for p in r["curve"] if p.get(name) is not None]
        if not points:
            continue
        seed = f"seed {r['seed']}" + (f" (repeat {r['repeat']})" if r["repeat"] else "")
        ax.plot(
            [e for e, _ in points],
            [v for _, v in points],
            alpha=0.35,
            linewidth=1,
            color=None if seeds_labelled else colour,
            label=seed if seeds_labelled else "_nolegend_",
        )
        for e, v in points:
            by_epoch.setdefault(e, []).append(v)
    if not by_epoch:
        return
    epochs = sorted(by_epoch)
    mean = [statistics.fmean(by_epoch[e]) for e in epochs]
    std = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    ax.plot(epochs, mean, color=colour, linewidth=2, label=label)
    ax.fill_between(
        epochs,
        [m - s for m, s in zip(mean, std)],
        [m + s for m, s in zip(mean, std)],
        color=colour,
        alpha=0.15,
        label="mean ± std" if seeds_labelled else "_nolegend_",
    )


def verdict(summary: dict) -> tuple[int, str]:
    """Exit status and a one-line verdict for a summary."""
    problems = []
    if summary["failed"]:
        problems.append(f"{summary['failed']} of {summary['jobs']} jobs failed")
    if summary.get("refused"):
        problems.append(
            f"{summary['refused']} of {summary['jobs']} jobs refused (their directories hold other runs: "
            "see summary.md)"
        )
    if summary.get("stopped"):
        problems.append(f"{summary['stopped']} of {summary['jobs']} jobs stopped by a signal")
    if summary["all_reproduce"] is False:
        bad = [
            " ".join(r["overrides"]) or f"seed={r['seed']}" for r in summary["reproducibility"] if not r["reproduces"]
        ]
        problems.append(f"{len(bad)} configuration(s) did not reproduce: {'; '.join(bad)}")
        causes = sorted({c for r in summary["reproducibility"] for c in r["possible_causes"]})
        if causes:
            problems.append("possible causes: " + " | ".join(causes))
    best = summary.get("best")
    if best:
        params = " ".join(f"{k}={v}" for k, v in best["params"].items())
        best_line = f"best {best['metric'] or 'value'} {best['value']} with {params}"
    if problems:
        return 1, "; ".join(problems + ([best_line] if best else []))
    several = len(summary["configurations"])
    extra = (f" ({several} configurations)" if several > 1 else "") + (
        ", every seed reproduces" if summary["all_reproduce"] else ""
    )
    return 0, f"{summary['jobs']} jobs completed{extra}" + (f"; {best_line}" if best else "")
