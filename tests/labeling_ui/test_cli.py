"""The `rlhf label` command line against the store's vocabularies it spells out (to keep `rlhf --help`
from importing SQLAlchemy)."""

import argparse

from labeling_ui.cli import add_commands
from labeling_ui.schema import ROLES


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
