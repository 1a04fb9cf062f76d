"""What `rlhf label` meets first: the command line (against the store's vocabularies it spells out, to
keep `rlhf --help` from importing SQLAlchemy) and the run's ranking database."""

import argparse

import pytest

from common.config import load_config
from labeling_ui.cli import add_commands
from labeling_ui.schema import ROLES, LabelingError
from labeling_ui.store import open_run_store


def test_the_role_choices_are_the_stores_roles():
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["label", "users", "add", "rita", "--run-dir", "x", "--role", "reviewer"])
    assert args.role == "reviewer"
    label = parser._subparsers._group_actions[0].choices["label"]
    users = label._subparsers._group_actions[0].choices["users"]
    add = users._subparsers._group_actions[0].choices["add"]
    [role] = [action for action in add._actions if action.dest == "role"]
    assert tuple(role.choices) == ROLES


def test_a_ranking_database_that_cannot_be_opened_names_the_key(tmp_path, postgres):
    for url, says in ((postgres.url("no_such_database"), "no_such_database"), ("notadb://x", "notadb"),
                      ("postgresql+psycopg://postgres@127.0.0.1:1/x", "127.0.0.1")):
        labeling = load_config(None, [f"labeling.database={url}"]).labeling
        with pytest.raises(LabelingError, match=f"labeling.database: cannot open the ranking database .*{says}"):
            open_run_store(labeling, tmp_path, batch="")
