"""examples/seed_recipe.ipynb: stored without outputs, and executed top to bottom on a fresh kernel
on the embedded default (the Azure Batch and Azure ML cells skip themselves without settings)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "seed_recipe.ipynb"


def _text(output: dict[str, object]) -> str:
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    data = output.get("data")
    return str(data.get("text/plain", "")) if isinstance(data, dict) else ""


def test_the_notebook_is_stored_without_outputs() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_seed_recipe_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WORKPOOL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = time.monotonic()
    client = NotebookClient(nb, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for a look when it fails
    seconds = time.monotonic() - started

    code_outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in code_outputs if o.output_type == "error"]
    everything = "\n".join(_text(o) for o in code_outputs)
    table = next(o.text for o in code_outputs if o.output_type == "stream" and "| Drain wall time (s)" in o.text)
    html = [o["data"]["text/html"] for o in code_outputs if "text/html" in o.get("data", {})]
    assert any("<table>" in h and "speedup" in h and "efficiency" in h for h in html)  # the benchmark table
    assert any("<table>" in h and "images_ok" in h for h in html)  # a drain report
    assert any("<progress" in h for h in html)  # run.wait()'s bar, drawn in place
    assert "1 node" in table and "2 nodes" in table and "Scaling efficiency" in table
    assert any("image/png" in o.get("data", {}) for o in code_outputs)
    assert "Egyptian cat" in everything and "espresso" in everything  # top labels of the real photos
    assert "ok: False; poisoned batches: 1" in everything and "'requeued': 1" in everything
    assert "Azure Batch is not configured here: skipped" in everything
    assert "Azure ML is not configured here: skipped" in everything
    print(f"\nnotebook executed in {seconds:.0f} s; its benchmark table:\n{table}")
