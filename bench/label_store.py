"""The ranking app under load: 20 annotators at once, each logged in over HTTP (Gradio's REST API)
against a real `rlhf label serve` process on a real database (SQLite, then PostgreSQL), taking its next task and
submitting a ranking. Prints the submit latency (p50, p95; goal p95 under 200 ms) with annotators
who pause about a second between rankings (a person takes far longer), the same with no pauses at
all, the rankings per second the server sustains then, and the same work straight on the store (no
HTTP, 20 threads), the database's own ceiling.

    python -m bench.label_store [--annotators 20] [--per-annotator 20] [--think 1.0] [--k 4] [--database both]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench import record

PASSWORD = "benchmark password"


def records(n: int, k: int) -> list[dict]:
    return [{"prompt_id": f"p{i:05d}", "prompt": f"Q: question {i}?\nA:",
             "candidates": [{"id": f"c{j + 1}", "text": f"answer {j} to question {i}.", "policy": "sft"} for j in range(k)]}
            for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_threads(names: list[str], work) -> float:
    errors: list[BaseException] = []

    def guarded(name):
        try:
            work(name)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after every thread has ended
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(name,)) for name in names]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


class RestAnnotator:
    """One annotator on Gradio's REST API (log in once, then POST /gradio_api/call/<name> and read the
    result's event stream), the plain-HTTP path any language can take. gradio_client speaks the same
    protocol but adds tens of milliseconds per call of its own on this machine, which would hide the
    server's latency."""

    def __init__(self, url: str, name: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        self.http.post("/login", data={"username": name, "password": PASSWORD}).raise_for_status()
        # one session for all of this annotator's calls, as the browser and gradio_client keep one: without
        # it the server builds a fresh session (a copy of every component's config) for each call
        self.session_hash = uuid.uuid4().hex

    def call(self, api_name: str, *data):
        event = self.http.post(f"/gradio_api/call/{api_name}", json={"data": list(data), "session_hash": self.session_hash})
        event.raise_for_status()
        stream = self.http.get(f"/gradio_api/call/{api_name}/{event.json()['event_id']}").text
        kind = next(line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: "))
        payload = next(line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("data: "))
        if kind != "complete":
            raise RuntimeError(f"{api_name}: {kind}: {payload}")
        return json.loads(payload)[0]


def over_http(run_dir: Path, names: list[str], per_annotator: int, think: float) -> tuple[list[float], float]:
    """(submit latencies, seconds for all the work) with every annotator pausing `think` seconds
    (on average, uniform from 0.5x to 1.5x) between a submit and its next task; 0: as fast as it can."""
    from labeling_ui.testing import ServerProcess

    server = ServerProcess(run_dir).start()
    latencies: list[float] = []
    try:
        annotators = {name: RestAnnotator(server.url, name) for name in names}

        def work(name):
            api, pause = annotators[name], random.Random(name)
            for _ in range(per_annotator):
                task = api.call("next_task")
                labels = [c["label"] for c in task["candidates"]]
                started = time.perf_counter()
                api.call("submit_ranking", task["assignment_id"], [[label] for label in labels], {label: 4 for label in labels},
                         {}, 5, "", str(uuid.uuid4()))
                latencies.append(time.perf_counter() - started)
                time.sleep(think * pause.uniform(0.5, 1.5))

        seconds = run_threads(names, work)
    finally:
        server.kill()
    return latencies, seconds


def on_the_store(store, users: dict[str, str], per_annotator: int) -> float:
    def work(name):
        for _ in range(per_annotator):
            task = store.next_task(users[name])
            ids = [c for c, _ in task.candidates]
            store.submit(users[name], task.assignment_id, [[c] for c in ids], {c: 4 for c in ids}, idempotency_key=str(uuid.uuid4()))

    return run_threads(list(users), work)


def run_on(database: str, url: str | None, args) -> None:
    """The benchmark on one database (`url`; None: the run's SQLite file), its figures printed and recorded."""
    from common.config import dump_config, load_config
    from labeling_ui.cli import run_store

    total = args.annotators * args.per_annotator
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(dump_config(load_config(None, [f"labeling.database={url}"] if url else [])))
        store, _ = run_store(str(run_dir))
        store.import_records(records(3 * total, args.k))
        names = [f"annotator{i}" for i in range(args.annotators)]
        users = {name: store.add_user(name, "annotator", PASSWORD) for name in names}
        paced, _ = over_http(run_dir, names, args.per_annotator, args.think)
        flat_out, seconds = over_http(run_dir, names, args.per_annotator, 0.0)
        store_seconds = on_the_store(store, users, args.per_annotator)
        assert len(store.rankings()) == 3 * total  # every acknowledged ranking is stored, once
        store.engine.dispose()
    p50, p95 = 1000 * percentile(paced, 50), 1000 * percentile(paced, 95)
    durability = {"sqlite": "SQLite (WAL, synchronous=FULL)", "postgresql": "PostgreSQL (fsync on, read committed)"}[database]
    print(f"workload: {args.annotators} annotators x {args.per_annotator} rankings of K = {args.k}, {durability}")
    print(f"submit latency, {args.think:.1f} s pauses   p50 {p50:6.1f} ms   p95 {p95:6.1f} ms   (goal: p95 < 200 ms)")
    print(f"submit latency, no pauses    p50 {1000 * percentile(flat_out, 50):6.1f} ms   p95 {1000 * percentile(flat_out, 95):6.1f} ms"
          "   (saturated: every annotator at once, all the time)")
    print(f"rankings per second, HTTP    {total / seconds:6.1f}   (saturated; next task + submit per ranking)")
    print(f"rankings per second, store   {total / store_seconds:6.1f}   (the same work without HTTP)")
    record("label_store", f"{database}: submit latency p50, {args.annotators} annotators", p50, "ms")
    record("label_store", f"{database}: submit latency p95, {args.annotators} annotators", p95, "ms", "< 200")
    record("label_store", f"{database}: rankings per second over HTTP (saturated)", total / seconds, "rankings/s")
    record("label_store", f"{database}: rankings per second on the store", total / store_seconds, "rankings/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--per-annotator", type=int, default=20)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds an annotator pauses between rankings")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both",
                        help="postgresql starts a server of its own (Debian's PostgreSQL, as make test installs it)")
    args = parser.parse_args()
    if args.database in ("sqlite", "both"):
        run_on("sqlite", None, args)
    if args.database in ("postgresql", "both"):
        from labeling_ui.testing import PostgresServer

        server = PostgresServer().start()
        try:
            run_on("postgresql", server.create_database(), args)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
