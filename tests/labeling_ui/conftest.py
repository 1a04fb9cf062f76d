"""A real ranking app (`rlhf label serve`, its own process) over a real SQLite database, and a real
headless Chromium driven by Playwright."""

from __future__ import annotations

import shutil
import threading

import pytest

from labeling_ui.testing import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"


def candidate_records(n: int, k: int = 4) -> list[dict]:
    """Prompts whose candidates try to run script: none of it may execute in the app."""
    return [{"prompt_id": f"p{i:03d}", "prompt": f"Q: prompt {i} <script>window.pwned = 'prompt'</script>\nA:",
             "candidates": [{"id": f"c{j + 1}", "text": f"<img src=x onerror=\"window.pwned = 'img'\"> answer {i}.{j}",
                             "policy": "sft"} for j in range(k)]}
            for i in range(n)]


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the whole session (a database of its own per test)."""
    from labeling_ui.testing import PostgresServer, postgres_bindir

    if postgres_bindir() is None:
        pytest.fail("PostgreSQL is not installed (make test installs it: apt-get install postgresql)")
    server = PostgresServer(durable=False).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty ranking database's URL, once a SQLite file and once a PostgreSQL database."""
    from labeling_ui.store import sqlite_url

    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "labels.db")
        return
    server = request.getfixturevalue("postgres")
    url = server.create_database()
    yield url
    server.drop_database(url)


def make_run_dir(root, database: str | None = None):
    """A run directory with 30 prompts of 4 candidates, each to be ranked by two annotators (overlap
    1.0), two annotators and an admin; its ranking database at `database` (a URL), else SQLite."""
    from common.config import dump_config, load_config
    from labeling_ui.cli import run_store

    run = root / "run"
    run.mkdir()
    overrides = ["labeling.overlap_fraction=1.0"] + ([f"labeling.database={database}"] if database else [])
    (run / "config.yaml").write_text(dump_config(load_config(None, overrides)))
    store, _ = run_store(str(run))
    store.import_records(candidate_records(30))
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("boss", "admin")):
        store.add_user(name, role, PASSWORD)
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path)


@pytest.fixture
def run_dir_each_database(db_url, tmp_path):
    """The run directory of `run_dir`, once on SQLite and once on PostgreSQL."""
    return make_run_dir(tmp_path, None if db_url.startswith("sqlite") else db_url)


@pytest.fixture
def server(run_dir):
    server = ServerProcess(run_dir).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(browser, url: str, name: str):
    """A new browser context (its own cookies) signed in as `name`, with the first task on screen."""
    context = browser.new_context(viewport={"width": 1200, "height": 2000})
    page = context.new_page()
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#signed-in:has-text('Signed in as')", timeout=30000)
    return page


def run_concurrently(work, args) -> list[Exception]:
    """work(arg) on one thread per arg, all at once; the exceptions they raised."""
    errors: list[Exception] = []

    def guarded(arg):
        try:
            work(arg)
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on them
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
