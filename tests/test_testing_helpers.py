"""provgraph.testing: users can assert on their own instrumentation."""

from __future__ import annotations

import pytest

import provgraph
from provgraph.testing import capture


def test_capture_collects_tasks_with_typed_values() -> None:
    @provgraph.task
    def load(n: int) -> list[int]:
        return list(range(n))

    @provgraph.task
    def fit(data: list[int], lr: float) -> dict[str, float]:
        if lr > 1:
            raise ValueError("lr too large")
        return {"loss": 0.5}

    with capture() as cap, provgraph.workflow("pipeline"):
        fit(load(3), 0.1)
        with pytest.raises(ValueError):
            fit([1], 2.0)
    tasks = cap.tasks()
    assert [(t["label"], t["status"]) for t in tasks] == [("load", "finished"), ("fit", "finished"),
                                                           ("fit", "failed")]
    assert tasks[0]["inputs"] == {"n": 3}
    assert tasks[1]["inputs"] == {"data": "[0, 1, 2]", "lr": 0.1}
    assert tasks[1]["outputs"] == {"loss": 0.5}
    assert tasks[2]["error"] == "lr too large"
    assert cap.sparql("SELECT (COUNT(?r) AS ?n) WHERE { ?r a pg:WorkflowRun }") == [{"n": "1"}]
