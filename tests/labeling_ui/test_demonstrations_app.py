"""The Write tab end to end: a real server process over a real SQLite database, and headless Chromium.
An annotator writes a demonstration, which is a server-side draft before it is submitted, and the
submitted one is in the snapshot's demonstrations.jsonl, SFT's data."""

import json
import time

import pytest
from playwright.sync_api import expect

from common.config import dump_config, load_config
from labeling_ui.cli import run_store
from labeling_ui.export import export_snapshot
from labeling_ui.testing import ServerProcess

from .conftest import PASSWORD, log_in

pytestmark = pytest.mark.slow

PROMPTS = ["Explain why the sky is blue <script>window.pwned = 'prompt'</script>", "Name three prime numbers."]


@pytest.fixture
def demonstration_run(tmp_path):
    """A run directory with two demonstration prompts (the first tries to run script), one ranking
    prompt for the Rank tab, and one annotator."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(None)))
    store, _ = run_store(str(run))
    store.import_records([{"prompt_id": f"d{i}", "prompt": text, "kind": "demonstration"} for i, text in enumerate(PROMPTS)]
                         + [{"prompt_id": "p0", "prompt": "Q: rank these\nA:",
                             "candidates": [{"id": f"c{j}", "text": f"answer {j}"} for j in range(2)]}])
    store.add_user("ann", "annotator", PASSWORD)
    return run


@pytest.fixture
def demonstration_server(demonstration_run):
    server = ServerProcess(demonstration_run).start()
    yield server
    server.kill()


def open_write_tab(page):
    page.get_by_role("tab", name="Write").click()
    return page.locator("#write-prompt textarea"), page.locator("#completion textarea")


def test_an_annotator_writes_a_demonstration_that_appears_in_the_sft_export(demonstration_server, browser):
    page = log_in(browser, demonstration_server.url, "ann")
    expect(page.locator("#prompt textarea")).to_have_value("Q: rank these\nA:")  # the Rank tab keeps its own task
    prompt, completion = open_write_tab(page)
    expect(prompt).to_have_value(PROMPTS[0], timeout=20000)  # shown as text ...
    written = "The air scatters blue light more than red.\nSo the sky looks <b>blue</b>."
    # Playwright's fill sets the text without an event that Gradio's text box reports; the keystroke
    # after it is typed as a person types, and saves the whole text
    completion.fill(written[:-1])
    completion.press_sequentially(written[-1])

    # the draft is on the server before anything is submitted: the database has it, and a reload shows it
    store, _ = run_store(str(demonstration_server.run_dir))
    ann = store.user("ann").id
    assignment = store.next_demonstration(ann).assignment_id  # ann's open reservation
    deadline = time.monotonic() + 20
    while store.draft(ann, assignment) != {"completion": written} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.draft(ann, assignment) == {"completion": written}
    page.reload()
    page.wait_for_selector("#signed-in:has-text('Signed in as')", timeout=30000)
    prompt, completion = open_write_tab(page)
    expect(completion).to_have_value(written, timeout=20000)
    assert store.demonstrations() == []

    submit = page.locator("button#write-submit")
    expect(submit).to_be_enabled()
    submit.click()
    expect(prompt).to_have_value(PROMPTS[1], timeout=20000)  # the next prompt, with an empty box
    expect(completion).to_have_value("")
    assert page.evaluate("window.pwned") is None  # ... and never run

    snapshot = export_snapshot(store, demonstration_server.run_dir / "labeling" / "exports")
    rows = [json.loads(line) for line in (snapshot / "demonstrations.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["completion"], r["annotator_id"], r["version"]) for r in rows] == [(PROMPTS[0], written, "ann", 1)]
    assert json.loads((snapshot / "manifest.json").read_text())["demonstrations"]["count"] == 1
