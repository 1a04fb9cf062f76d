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
    records = [record for _, record in numbered_jsonl_records(path)]
    print(f"imported {store.import_records(records, str(path))} new prompts from {path}")


def _export(args: argparse.Namespace) -> None:
    from labeling_ui.export import export_snapshot

    store, exports = run_store(args.run_dir)
    print(export_snapshot(store, Path(args.out) if args.out else exports))


def _stats(args: argparse.Namespace) -> None:
    from labeling_ui.export import agreement

    store, _ = run_store(args.run_dir)
    print(json.dumps({"coverage": store.coverage(), "agreement": agreement(store)}, indent=2, sort_keys=True))


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
    add = run_command(users, "add", _users_add, "add an annotator or admin (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", choices=("annotator", "admin"), default="annotator")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")

    imp = run_command(sub, "import", _import, "import prompts and candidates (the sample stage's candidates.jsonl format)")
    imp.add_argument("file")

    exp = run_command(sub, "export", _export, "write an immutable export snapshot (K-way and pairwise JSONL, manifest)")
    exp.add_argument("--out", help="folder for snapshots (default: DIR/labeling/exports)")

    run_command(sub, "stats", _stats, "coverage and agreement (pairwise, Kendall tau-b, Krippendorff's alpha)")
