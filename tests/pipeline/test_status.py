"""`rlhf status`: every stage in the graph's order with the headline its declaration names."""

from common.run_dir import DONE, RunDir
from pipeline.status import status_rows
from stages.registry import GRAPH


def test_rows_follow_the_graph_and_show_each_stage_s_declared_headline(tmp_path):
    run = RunDir(tmp_path / "run")
    for name in sorted(GRAPH.names):  # the manifest keeps its keys sorted, not in run order
        metric = GRAPH[name].headline[0]
        run.update_stage(name, status=DONE, fingerprint="f", metrics={metric: 0.5})
    rows = status_rows(str(run.root))
    assert [row["stage"] for row in rows] == list(GRAPH.names)
    assert {row["stage"]: row["headline"] for row in rows}["sft_lora"] == "heldout_exact_match 0.500"
