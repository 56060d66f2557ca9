"""benchmarks/gpu_check.sh's own plumbing (step runner, time limits, budget, bundling, summary),
run in its self-test form, which needs no GPU: what a lent GPU machine's short window relies on."""
import json
import os
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
STEPS = ["build", "info", "tests_cuda", "memcheck", "racecheck", "bench", "time_limit"]
ALLOWED = {"summary.md", "results.json", "results.md", "results.png", "logs.tar.gz"}


def run_selftest(out, budget_s=None):
    env = dict(os.environ, PYNOTES_GPU_CHECK_SELFTEST="1", PYTHON=sys.executable)
    env.pop("PYNOTES_TEST_DEVICES", None)
    if budget_s is not None:
        env["PYNOTES_GPU_CHECK_BUDGET_S"] = str(budget_s)
    start = time.monotonic()
    proc = subprocess.run(["bash", SCRIPT, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, time.monotonic() - start


def summary_rows(out):
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in STEPS:
            rows[cells[0]] = cells[1]
    return rows


def test_selftest_writes_the_bundle_and_holds_time_limits(tmp_path):
    proc, _ = run_selftest(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = set(os.listdir(tmp_path))
    assert files <= ALLOWED and len(files) <= 6, files
    assert {"summary.md", "results.json", "results.md", "logs.tar.gz"} <= files
    rows = summary_rows(tmp_path)
    assert list(rows) == STEPS
    assert all(rows[s] == "ok" for s in STEPS[:-1]), rows
    assert rows["time_limit"].startswith("timed out after 2 s")
    # The dry forms list what a GPU run would run: CUDA tests and benchmark cases.
    cases = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert any(c.startswith("group_norm") for c in cases) and any("gbdt" in c for c in cases)
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        logs = {os.path.basename(n): tar.extractfile(n).read().decode()
                for n in tar.getnames() if n.endswith(".log")}
    assert set(logs) == {f"{s}.log" for s in STEPS}
    assert "test_forward_matches_torch[cuda-" in logs["memcheck.log"]
    assert "test_histogram_matches_numpy_add_at[cuda-" in logs["racecheck.log"]
    assert "tests/test_lstm.py::" in logs["tests_cuda.log"]


def test_budget_cuts_and_skips_steps(tmp_path):
    budget_s = 16
    proc, seconds = run_selftest(tmp_path, budget_s)
    assert proc.returncode != 0  # steps that could not run count as failures
    assert seconds < budget_s + 10  # the kill grace of the step in flight
    rows = summary_rows(tmp_path)
    assert list(rows) == STEPS
    assert rows["bench"] == "skipped: no time left"
    assert set(os.listdir(tmp_path)) <= ALLOWED
