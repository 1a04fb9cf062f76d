"""The qualification end to end: a real server process over a real SQLite database, headless Chromium.
An annotator who ranks the qualification's gold items against their reference is told so and gets no
real prompt."""

import re

import pytest
from gradio_client import Client
from playwright.sync_api import expect
from sqlalchemy import select

from labeling_ui.cli import run_store
from labeling_ui.schema import Assignment
from labeling_ui.testing import ServerProcess

from .conftest import PASSWORD, candidate_records, log_in

pytestmark = pytest.mark.slow

GOLD = [["c1"], ["c2"], ["c3"], ["c4"]]


@pytest.fixture
def qualifying_server(tmp_path):
    """A run whose annotators rank 2 gold items before real work; each gold candidate's text names its id."""
    from common.config import dump_config, load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(None, ["labeling.qualification_items=2"])))
    store, _ = run_store(str(run))
    gold = [{"prompt_id": f"gold{i}", "prompt": f"Gold question {i}", "gold": GOLD,
             "candidates": [{"id": f"c{j}", "text": f"gold answer c{j}"} for j in range(1, 5)]} for i in (1, 2)]
    store.import_records(candidate_records(3) + gold)
    store.add_user("ann", "annotator", PASSWORD)
    store.add_user("boss", "admin", PASSWORD)
    server = ServerProcess(run).start()
    yield server
    server.kill()


def rank_against_the_gold(page) -> None:
    """Rank the four candidates on screen in the reverse of the gold order (c4 best), every Likert 4."""
    for slot in range(4):
        number = int(page.locator(f"#candidate-{slot} textarea").input_value().removeprefix("gold answer c"))
        page.locator(f"#likert-{slot} [data-testid='4-radio-label']").click()
        page.locator(f"#rank-{slot} [data-testid='{5 - number}-radio-label']").click()
    page.locator("button#submit").click()


def test_an_annotator_who_fails_the_qualification_is_told_so_and_gets_no_real_work(qualifying_server, browser):
    page = log_in(browser, qualifying_server.url, "ann")
    prompt = page.locator("#prompt textarea")
    expect(page.locator("#progress")).to_contain_text("Qualification item 1 of 2")
    expect(prompt).to_have_value("Gold question 1")
    rank_against_the_gold(page)
    expect(prompt).to_have_value("Gold question 2", timeout=20000)
    expect(page.locator("#progress")).to_contain_text("Qualification item 2 of 2")
    rank_against_the_gold(page)
    expect(prompt).to_have_value(re.compile("You did not pass the qualification.*reference rankings: 0%"), timeout=20000)
    expect(page.locator("#candidate-0")).to_be_hidden()

    store, _ = run_store(str(qualifying_server.run_dir))
    ann = store.user("ann").id
    assert store.qualification(ann).state == "failed" and store.qualification(ann).score == 0.0
    with store.reading() as session:
        served = session.execute(select(Assignment.is_gold, Assignment.status).where(Assignment.annotator_id == ann)).all()
    assert sorted(served) == [(True, "submitted"), (True, "submitted")]  # the two gold items, no real prompt

    admin = Client(qualifying_server.url, auth=("boss", PASSWORD), verbose=False, analytics_enabled=False, download_files=False)
    _, table = admin.predict(api_name="/admin_view")
    row = dict(zip(table["headers"], next(r for r in table["data"] if r[0] == "ann")))
    assert row["qualification"] == "failed (0.00)" and row["gold accuracy"] == "0.000 ALERT"
