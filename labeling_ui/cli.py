"""`rlhf label serve|users|import|export|stats`: the ranking app and its data, for a run directory.

The database and its settings come from the run's config (DIR/config.yaml, labeling section): its
URL, or SQLite at DIR/labels.db. Annotators are served the batch of candidates of the run's sample
stage; a run without one (labeling a file of candidates by itself) uses a batch of its own.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from common.errors import InputError
from common.files import numbered_jsonl_records

STANDALONE_BATCH = "standalone"


def run_store(run_dir: str):
    """(the run's store, its exports folder)."""
    from common.config import load_config
    from common.run_dir import RunDir
    from labeling_ui.simulated import simulated_batch
    from labeling_ui.store import open_run_store

    run = RunDir(run_dir)
    config = load_config(run.config_path if run.config_path.exists() else None)
    batch = run.stage_record("sample").get("fingerprint", STANDALONE_BATCH) if run.manifest_path.exists() else STANDALONE_BATCH
    labeled = run.stage_record("label").get("fingerprint") if run.manifest_path.exists() else None
    if config.labeling.mode == "simulated" and batch != STANDALONE_BATCH and labeled:
        batch = simulated_batch(batch, labeled)  # what the simulated annotators of the run's labeling ranked
    run.root.mkdir(parents=True, exist_ok=True)
    return open_run_store(config.labeling, run.root, batch), run.root / "labeling" / "exports"


def _serve(args: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    from labeling_ui.app import serve

    store, exports = run_store(args.run_dir)
    serve(store, exports, args.host, args.port)


def _users_add(args: argparse.Namespace) -> None:
    store, _ = run_store(args.run_dir)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the two passwords differ")
    store.add_user(args.name, args.role, password)
    print(f"added {args.role} {args.name}")


def _import(args: argparse.Namespace) -> None:
    store, _ = run_store(args.run_dir)
    path = Path(args.file)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if args.format != "candidates":
        if args.demonstrations:
            raise InputError(f"--demonstrations reads a candidates file; an {args.format} export holds rankings")
        from labeling_ui.interchange import from_argilla, from_label_studio, read_export

        convert = from_argilla if args.format == "argilla" else from_label_studio
        added = store.import_rankings(convert(read_export(path)), str(path))
        print(f"imported from {path}: {added['rankings']} new rankings, {added['prompts']} new prompts, "
              f"{added['annotators']} new annotators (accounts that cannot sign in)")
        return
    records = [record for _, record in numbered_jsonl_records(path)]
    if args.demonstrations:
        records = [{**record, "kind": "demonstration"} for record in records]
    print(f"imported {store.import_records(records, str(path))} new prompts from {path}")


def _export(args: argparse.Namespace) -> None:
    store, exports = run_store(args.run_dir)
    folder = Path(args.out) if args.out else exports
    if args.format == "kway":
        from labeling_ui.export import export_snapshot

        print(export_snapshot(store, folder))
        return
    from labeling_ui.interchange import write_export

    for path in write_export(store.rankings(), args.format, folder):
        print(path)


def _users_requalify(args: argparse.Namespace) -> None:
    store, _ = run_store(args.run_dir)
    store.requalify(args.name)
    print(f"{args.name} takes the qualification again (labeling.qualification_items gold items before real work)")


def _stats(args: argparse.Namespace) -> None:
    from labeling_ui.export import agreement
    from labeling_ui.quality import store_quality, write_quality_plot

    store, _ = run_store(args.run_dir)
    quality = store_quality(store)
    plot = write_quality_plot(quality, Path(args.run_dir) / "labeling" / "quality.png")
    print(json.dumps({"coverage": store.coverage(), "agreement": agreement(store), "quality": quality, "quality_plot": str(plot)},
                     indent=2, sort_keys=True))


def run_command(parent, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand that works on one run directory (--run-dir)."""
    command = parent.add_parser(name, help=help)
    command.add_argument("--run-dir", required=True)
    command.set_defaults(func=func)
    return command


def add_commands(commands) -> None:
    label = commands.add_parser("label", help="the ranking app and its data (rlhf label serve|users|import|export|stats)")
    sub = label.add_subparsers(dest="label_command", required=True)

    serve = run_command(sub, "serve", _serve, "serve the ranking app (Gradio) for annotators")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=7860)

    users = sub.add_parser("users", help="manage annotator accounts").add_subparsers(dest="users_command", required=True)
    add = run_command(users, "add", _users_add, "add an annotator, reviewer or admin (asks for the password)")
    add.add_argument("name")
    # labeling_ui.schema.ROLES, spelled out: importing the store (SQLAlchemy) would slow every `rlhf --help`
    add.add_argument("--role", choices=("annotator", "reviewer", "admin"), default="annotator",
                     help="annotator: ranks; reviewer: also reviews (accept, reject, adjudicate); admin: also sees figures and exports")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    requalify = run_command(users, "requalify", _users_requalify,
                            "re-admit an annotator: they take the qualification again on gold items they have not had")
    requalify.add_argument("name")

    imp = run_command(sub, "import", _import, "import prompts and candidates (the sample stage's candidates.jsonl format), "
                      "and demonstration prompts ({prompt_id, prompt, kind: demonstration}: the Write tab)")
    imp.add_argument("file")
    imp.add_argument("--demonstrations", action="store_true",
                     help="every record is a demonstration prompt ({prompt_id, prompt}), whatever its 'kind' says")
    imp.add_argument("--format", choices=("candidates", "argilla", "label-studio"), default="candidates",
                     help="candidates: the sample stage's candidates.jsonl (default); argilla: Argilla's records (to_json, "
                          "to_list, to_datasets; 1.x FeedbackDataset); label-studio: Label Studio's JSON export (Ranker "
                          "with buckets, or Pairwise): their prompts, candidates and rankings, ties kept")

    exp = run_command(sub, "export", _export, "write an immutable export snapshot (K-way and pairwise JSONL, manifest)")
    exp.add_argument("--out", help="folder for snapshots (default: DIR/labeling/exports)")
    exp.add_argument("--format", choices=("kway", "argilla", "label-studio", "label-studio-pairwise"), default="kway",
                     help="kway: the snapshot (default); argilla: Argilla records (RankingQuestion, ties as equal ranks); "
                          "label-studio: Label Studio tasks and their labeling config (Ranker, tiers as buckets); "
                          "label-studio-pairwise: the same with Pairwise, K = 2 only")

    run_command(sub, "stats", _stats, "coverage, agreement (pairwise, Kendall tau-b, Krippendorff's alpha) and each annotator's "
                "quality (JSON), with a plot of the quality at DIR/labeling/quality.png")
