"""The benchmark harness still runs: ``python -m bench --smoke`` end to end, as a user would start it.

Never a timed test: it checks that every scenario ran and wrote its numbers, not what they are.
Without wrk or adnanh/webhook (CI machines may lack them) those parts report "not installed".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.redisdb import bench_url
from tests.parallel import per_worker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"accept", "accept_breakdown", "push_to_running", "overhead", "burst", "growth", "many_hosts"}
KEPT_ENV = "PUSHDEPLOY_BENCH_REDIS_URL"  # the harness' own database: a machine may give each user one


def test_smoke_run_writes_every_scenario(tmp_path: Path) -> None:
    results_file = tmp_path / "smoke.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDEPLOY_")}
    env[KEPT_ENV] = per_worker(bench_url(None))  # under pytest-xdist, this worker's own
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(results_file)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"

    results = json.loads(results_file.read_text())
    scenarios = results["scenarios"]
    assert set(scenarios) == SCENARIOS
    assert {name: s["status"] for name, s in scenarios.items()} == dict.fromkeys(SCENARIOS, "ok")

    accept = scenarios["accept"]["targets"]
    assert accept["pushdeploy"]["preflight"] == {"signed": 202, "forged": 401}
    assert accept["bare_flask"]["preflight"] == {"signed": 202, "forged": 401}
    if shutil.which("webhook"):
        assert accept["adnanh_webhook"]["preflight"]["signed"] == 202
    else:
        assert accept["adnanh_webhook"] == {"status": "not installed"}
    if shutil.which("wrk"):
        assert scenarios["accept"]["load"] == "wrk"
        assert accept["pushdeploy"]["statuses"].get("202", 0) > 0
    else:
        assert scenarios["accept"]["load"] == "not installed"

    assert scenarios["push_to_running"]["pushes"] == len(scenarios["push_to_running"]["samples"]) > 0
    assert [s["files"] for s in scenarios["overhead"]["shapes"]] == [1, 100]
    burst = scenarios["burst"]
    assert burst["answers"] == {"202": burst["deliveries"]}
    assert burst["deployments_ran"] >= burst["environments"]
    growth = scenarios["growth"]
    assert growth["answers"] == {"202": growth["deliveries"]}
    assert growth["history_length"]["max"] <= growth["keep_deployments"]
    kept = growth["environments"] * growth["keep_deployments"]
    assert growth["kinds"]["deployment records"]["keys"] <= kept  # pruned, however each one ended
    assert growth["keys_total"] == sum(kind["keys"] for kind in growth["kinds"].values())
    for read in ("api_list_environment", "api_list_all", "overview_page", "metrics_scrape"):
        assert growth[read]["requests"] > 0 and growth[read]["p99_ms"] >= growth[read]["median_ms"] > 0
    assert {t["verdict"] for t in results["targets"]} <= {"met", "NOT MET", "not measured"}
    assert len(results["targets"]) == 9
