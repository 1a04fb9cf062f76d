"""The run's report, built from the manifest and the stages' metrics files alone (no model is
loaded), so `rlhf report DIR` rebuilds it at any time and `rlhf run` ends with it:

  DIR/eval/summary.json   every figure of the tables, machine-readable
  DIR/eval/report.md      the tables, with PNG plots beside it (matplotlib)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from common.config import COMPARED_METHODS, method_stage
from common.errors import InputError
from common.files import atomic_write_json, atomic_write_text, read_jsonl
from common.run_dir import RunDir
from stages.scoring.metrics import Overoptimisation, overoptimisation_onset

FIGURE_SIZE = (8.0, 3.0)  # inches, at 100 dpi
DPI = 100
EVAL_COLUMNS = ("true_score", "win_rate_vs_sft", "win_rate_low", "win_rate_high", "rm_score", "rm_win_rate_vs_sft",
                "rm_win_rate_low", "rm_win_rate_high", "heldout_rm_win_rate_vs_sft", "heldout_rm_win_rate_low",
                "heldout_rm_win_rate_high", "exact_match", "rouge_l", "sampled_true_score", "kl_to_sft", "response_length",
                "decode_ms", "lm_loss", "heldout_family_true_score", "heldout_family_ni_exact_match", "heldout_family_rouge_l")


def _method_rows(evaluated: dict, stage_rows: list[dict]) -> list[dict[str, Any]]:
    """One row per method trained from the same SFT policy (PPO-ptx and eval.compare_methods), when any was
    compared: held-out true score, win rate against SFT with its interval, reward-model score, KL to SFT, the
    alignment tax (LM loss on held-out pretraining text above SFT's) and the stage's wall time."""
    names = [n for n in ("ppo", *map(method_stage, COMPARED_METHODS)) if n in evaluated]
    if len(names) < 2 or "sft" not in evaluated:
        return []
    seconds = {r["stage"]: r["duration_s"] for r in stage_rows}
    sft_loss = evaluated["sft"].get("lm_loss")
    rows = []
    for name in names:
        policy = evaluated[name]
        tax = policy["lm_loss"] - sft_loss if policy.get("lm_loss") is not None and sft_loss is not None else None
        rows.append({"method": name, "true_score": policy.get("true_score"), "win_rate_vs_sft": policy.get("win_rate_vs_sft"),
                     "win_rate_low": policy.get("win_rate_low"), "win_rate_high": policy.get("win_rate_high"),
                     "rm_score": policy.get("rm_score"), "kl_to_sft": policy.get("kl_to_sft"), "lm_loss_above_sft": tax,
                     "wall_time_s": seconds.get(name)})
    return rows


def _stage_rows(stages: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(stages, key=lambda n: stages[n].get("started_at", float("inf"))):  # in the order they ran
        record = stages[name]
        duration = record["finished_at"] - record["started_at"] if "finished_at" in record and "started_at" in record else None
        rows.append({"stage": name, "status": record.get("status"), "duration_s": duration, "job_id": record.get("job_id")})
    return rows


def _plots(out: Path, stage_rows: list[dict], evaluated: dict, calibration: list, methods: list[dict], ppo_records: list[dict],
           onset: Overoptimisation | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}

    def save(figure, name: str) -> None:
        figure.tight_layout()
        tmp = out / f"{name}.tmp.png"
        figure.savefig(tmp, dpi=DPI)
        tmp.replace(out / f"{name}.png")
        plt.close(figure)
        plots[name] = f"{name}.png"

    if ppo_records:
        steps = [r["step"] for r in ppo_records]
        figure, axes = plt.subplots(1, 3, figsize=FIGURE_SIZE)
        for axis, (key, title) in zip(axes, (("ppo/score", "reward-model score"), ("ppo/kl", "KL to SFT (nats)"), ("ppo/beta", "beta"))):
            axis.plot(steps, [r[key] for r in ppo_records], marker=".")
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("PPO iteration", fontsize=8)
        save(figure, "ppo_curves")
    scored = _true_scored(ppo_records)
    if scored:  # the over-optimisation curve: where the two part, the policy games the reward model
        figure, axis = plt.subplots(figsize=FIGURE_SIZE)
        axis.plot([r["step"] for r in scored], [r["ppo/score"] for r in scored], marker=".", label="reward-model score")
        axis.plot([r["step"] for r in scored], [r["ppo/true_score"] for r in scored], marker=".", label="true score")
        if onset is not None and onset.began:
            axis.axvline(onset.peak_step, linestyle=":", color="grey", label=f"true score peaks (mean of {onset.window} iterations)")
        axis.set_xlabel("PPO iteration", fontsize=8)
        axis.legend(fontsize=8)
        save(figure, "rm_vs_true_score")
    if evaluated:
        first = next(iter(evaluated.values()))
        families = sorted(first.get("per_family", {}))
        panels = [("true_score", "true score per task family"), ("exact_match", "exact match per task family")] if families else []
        figure, axes = plt.subplots(1, len(panels) + 1, figsize=FIGURE_SIZE, squeeze=False)
        width = 0.8 / len(evaluated)
        every_score = [x for policy in evaluated.values() for x in policy["scores"]]
        bins = (min(every_score, default=0.0), max(every_score, default=1.0))  # one set of bins for every policy
        for k, (name, policy) in enumerate(evaluated.items()):
            for axis, (key, _) in zip(axes[0], panels):
                axis.bar([i + k * width for i in range(len(families))], [policy["per_family"][f][key] for f in families], width, label=name)
            axes[0][-1].hist(policy["scores"], bins=12, range=bins, histtype="step", label=name)
        for axis, (_, title) in zip(axes[0], panels):
            axis.set_xticks([i + 0.4 - width / 2 for i in range(len(families))], families, fontsize=7, rotation=30)
            axis.set_title(title, fontsize=9)
        axes[0][-1].set_title(f"{'true' if families else 'reward-model'} score distribution", fontsize=9)
        axes[0][-1].legend(fontsize=7)
        save(figure, "policies")
    judged = [m for m in methods if m["win_rate_vs_sft"] is not None]
    if judged:  # each method's win rate with its interval, and what it bought against how far it moved
        figure, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE)
        rates = [m["win_rate_vs_sft"] for m in judged]
        errors = [[r - m["win_rate_low"] for r, m in zip(rates, judged)], [m["win_rate_high"] - r for r, m in zip(rates, judged)]]
        axes[0].barh([m["method"] for m in judged][::-1], rates[::-1], xerr=[e[::-1] for e in errors], capsize=3)
        axes[0].axvline(0.5, linestyle=":", color="grey")
        axes[0].set_title("win rate against SFT (true score, 95% interval)", fontsize=9)
        for m in judged:
            axes[1].scatter(m["kl_to_sft"] or 0.0, m["true_score"])
            axes[1].annotate(m["method"], (m["kl_to_sft"] or 0.0, m["true_score"]), fontsize=7)
        axes[1].set_xlabel("KL to SFT (nats)", fontsize=8)
        axes[1].set_title("held-out true score", fontsize=9)
        save(figure, "methods")
    if calibration:
        figure, axis = plt.subplots(figsize=FIGURE_SIZE)
        axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
        axis.plot([b["predicted"] for b in calibration], [b["observed"] for b in calibration], marker="o")
        axis.set_xlabel("reward model: P(first preferred)", fontsize=8)
        axis.set_ylabel("labels: first preferred", fontsize=8)
        save(figure, "rm_calibration")
    timed = [r for r in stage_rows if r["duration_s"] is not None]
    if timed:
        figure, axis = plt.subplots(figsize=FIGURE_SIZE)
        axis.barh([r["stage"] for r in timed][::-1], [r["duration_s"] for r in timed][::-1])
        axis.set_xlabel("seconds", fontsize=8)
        save(figure, "stage_times")
    return plots


def _true_scored(ppo_records: list[dict]) -> list[dict]:
    """PPO's iterations whose samples the tiny world's true score judged too."""
    return [r for r in ppo_records if "ppo/true_score" in r]


def _overoptimisation(ppo_records: list[dict]) -> Overoptimisation | None:
    """Where over-optimisation begins in PPO's curves: the true score of its samples against their
    reward-model score; None without a true score or with too few iterations."""
    scored = _true_scored(ppo_records)
    return overoptimisation_onset([r["step"] for r in scored], [r["ppo/score"] for r in scored],
                                  [r["ppo/true_score"] for r in scored])


def _onset_text(onset: Overoptimisation) -> str:
    curve = f"The true score of PPO's samples (means of {onset.window} iterations)"
    if onset.true_at_end == onset.true_at_peak:
        return (f"{curve} was highest over the last {onset.window} iterations ({onset.true_at_end:.3f}; their reward-model "
                f"score {onset.proxy_at_end:.3f}): no over-optimisation within these iterations.\n")
    where = f"{curve} peaked at iteration {onset.peak_step} ({onset.true_at_peak:.3f}) and ended at {onset.true_at_end:.3f}"
    proxy = f"their reward-model score {onset.proxy_at_peak:.3f} there and {onset.proxy_at_end:.3f} at the end"
    if onset.began:
        return (f"{where}, more than its noise ({onset.margin:.3f}) below the peak, while {proxy}: over-optimisation "
                f"begins at iteration {onset.peak_step}, where PPO starts to game the reward model.\n")
    if not onset.true_fell:
        return (f"{where}, within its noise ({onset.margin:.3f}) of the peak; {proxy}: no over-optimisation shown within "
                "these iterations.\n")
    return f"{where}, and {proxy}: a worse policy by both judges, not a gamed reward model.\n"


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_report(run_dir: str | Path) -> Path:
    """Write DIR/eval/summary.json, DIR/eval/report.md and its plots; returns the report's path."""
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise InputError(f"{run.manifest_path} does not exist; is {run_dir} a run directory?")
    stages = run.read_manifest()["stages"]
    out = run.root / "eval"
    out.mkdir(parents=True, exist_ok=True)
    stage_rows = _stage_rows(stages)
    rm = {k: v for k, v in stages.get("rm", {}).get("metrics", {}).items() if k.startswith("rm/")}
    evaluated = _read_json(out / "policies.json", {})
    order = ("base", "sft", "ppo", "ppo_no_ptx")  # as the pipeline makes them
    evaluated = {name: evaluated[name] for name in sorted(evaluated, key=lambda n: order.index(n) if n in order else len(order))}
    calibration = _read_json(run.stage_dir("rm") / "calibration.json", [])
    methods = _method_rows(evaluated, stage_rows)
    ppo_records = [r for r in read_jsonl(run.metrics_path("ppo")) if "ppo/score" in r]  # an iteration's record
    onset = _overoptimisation(ppo_records)
    plots = _plots(out, stage_rows, evaluated, calibration, methods, ppo_records, onset)
    summary = {"stages": stage_rows, "sft": stages.get("sft", {}).get("metrics", {}), "reward_model": rm, "methods": methods,
               "ppo": stages.get("ppo", {}).get("metrics", {}),
               "overoptimisation": onset and {**dataclasses.asdict(onset), "began": onset.began},
               "evaluation": {n: {k: v for k, v in p.items() if k != "scores"} for n, p in evaluated.items()},
               "rm_calibration": calibration, "plots": plots}
    atomic_write_json(out / "summary.json", summary)

    parts = [f"# Run report: {run.root.name}\n", "## Stages\n", _table(stage_rows)]
    if "stage_times" in plots:
        parts.append(f"![time per stage]({plots['stage_times']})\n")
    if rm:
        parts += ["## Reward model (held-out prompts)\n", _table([{"metric": k, "value": v} for k, v in sorted(rm.items())])]
    if evaluated:
        columns = [c for c in EVAL_COLUMNS if any(c in policy for policy in evaluated.values())]
        rows = [{"policy": name, **{c: policy.get(c) for c in columns}} for name, policy in evaluated.items()]
        parts += ["## Policies on held-out prompts (eval stage)\n",
                  "Win rates are against SFT on the same prompts (a tie counts half), with their 95% intervals: by the tiny "
                  "world's true score (0 to 1.5), by the reward model PPO trained against (rm_), and by a held-out reward "
                  "model (heldout_rm_) when one was given.\n", _table(rows)]
        if "policies" in plots:
            parts.append(f"![per task family, and the score distribution]({plots['policies']})\n")
    if methods:
        parts += ["## Methods from the same SFT policy\n",
                  "PPO-ptx (GAE, a critic) and the methods of eval.compare_methods, each trained from the same SFT policy: the "
                  "RL estimators on the same reward model and episodes, DPO on the same rankings. lm_loss_above_sft is the "
                  "alignment tax; wall_time_s the stage's.\n", _table(methods)]
        if "methods" in plots:
            parts.append(f"![win rate against SFT, and true score against KL to SFT]({plots['methods']})\n")
    if "ppo_curves" in plots:
        parts.append(f"![PPO: score, KL and beta per iteration]({plots['ppo_curves']})\n")
    if "rm_vs_true_score" in plots:
        parts.append(f"![reward-model score against true score over PPO iterations]({plots['rm_vs_true_score']})\n")
    if onset is not None:
        parts.append(_onset_text(onset))
    if "rm_calibration" in plots:
        parts.append(f"![reward-model calibration on held-out pairs]({plots['rm_calibration']})\n")
    report = out / "report.md"
    atomic_write_text(report, "\n".join(parts))
    return report
