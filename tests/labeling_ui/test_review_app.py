"""The Review tab end to end: a real `rlhf label serve` process, a real SQLite database and headless
Chromium. A reviewer rejects a ranking, and the next export no longer has it (labeling spec 4.7)."""

import json

import pytest
from gradio_client import Client
from playwright.sync_api import expect

from common.config import dump_config, load_config
from labeling_ui.cli import run_store
from labeling_ui.export import export_snapshot
from labeling_ui.testing import ServerProcess

from .conftest import PASSWORD, candidate_records, log_in

pytestmark = pytest.mark.slow

IN_ORDER = [["c1"], ["c2"], ["c3"], ["c4"]]


@pytest.fixture
def review_run(tmp_path):
    """A run directory where ann and bob ranked p000 in opposite orders (both go to review), with a
    reviewer, rita; and the export snapshot taken before any review."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(None, ["labeling.overlap_fraction=1.0"])))
    store, _ = run_store(str(run))
    store.import_records(candidate_records(3))
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("rita", "reviewer")):
        store.add_user(name, role, PASSWORD)
    for name, tiers in (("ann", IN_ORDER), ("bob", IN_ORDER[::-1])):
        user = store.user(name).id
        task = store.next_task(user)
        store.submit(user, task.assignment_id, tiers, {c: 4 for c, _ in task.candidates})
    return run, export_snapshot(store, tmp_path / "exports")


def exported(snapshot) -> set[tuple[str, str]]:
    return {(r["annotator_id"], r["prompt_id"]) for r in map(json.loads, (snapshot / "rankings.jsonl").read_text().splitlines())}


def test_a_reviewer_rejects_a_ranking_in_the_browser_and_the_next_export_has_no_record_of_it(review_run, browser, tmp_path):
    run, before = review_run
    assert exported(before) == {("ann", "p000"), ("bob", "p000")}
    server = ServerProcess(run).start()
    try:
        page = log_in(browser, server.url, "rita")
        page.get_by_role("tab", name="Review").click()
        page.locator("button#review-refresh").click()
        expect(page.locator("#review-summary")).to_contain_text("2 awaiting review", timeout=20000)
        rankings = page.locator("#review-rankings textarea")
        # the oldest first: ann's, against bob's reversed ranking
        expect(rankings).to_have_value("ann (under review): c1 > c2 > c3 > c4\nbob: c4 > c3 > c2 > c1", timeout=20000)
        expect(page.locator("#review-reasons textarea")).to_have_value("disagreement: Kendall tau-b -1.00 with bob's ranking")
        assert "<img src=x onerror=" in page.locator("#review-candidates textarea").input_value()  # text, never HTML
        page.locator("button#review-reject").click()
        expect(page.get_by_text("a rejection needs a comment saying what was wrong")).to_be_visible(timeout=20000)
        page.locator("#review-comment textarea").fill("c1 is the worst answer here")
        page.locator("button#review-reject").click()
        expect(page.locator("#review-result")).to_contain_text("Rejected", timeout=20000)
        # bob's ranking disagreed only with the rejected one
        expect(page.locator("#review-summary")).to_contain_text("Nothing awaits review")
        assert page.evaluate("window.pwned") is None

        # the role is checked on the server, not only by hiding the tab
        bob = Client(server.url, auth=("bob", PASSWORD), verbose=False, analytics_enabled=False, download_files=False)
        with pytest.raises(Exception, match="only a reviewer or an admin can review"):
            bob.predict(api_name="/review_queue")
    finally:
        server.kill()

    store, _ = run_store(str(run))
    after = export_snapshot(store, tmp_path / "exports")
    assert exported(after) == {("bob", "p000")}
    assert exported(before) == {("ann", "p000"), ("bob", "p000")}  # an earlier snapshot keeps what it had
    [decision] = store.reviews()
    assert (decision.action, decision.comment) == ("reject", "c1 is the worst answer here")
