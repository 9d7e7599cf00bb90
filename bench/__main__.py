"""``python -m bench [--smoke]``: run every scenario, print the targets, write JSON (and the docs page).

Each scenario starts what it needs and stops it in a ``finally``; the Redis database (9 unless
told otherwise; never the tests' 15) is flushed before and after each one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

from bench import accept, breakdown, burst, deploys, growth, many_hosts, report
from bench.machine import describe
from bench.plan import FULL, SMOKE, Plan
from bench.procs import ROOT, HarnessError
from bench.redisdb import bench_url, connect
from bench.targets import evaluate

Scenario = Callable[[Plan, Path, Redis, str], dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "accept": accept.run,
    "accept_breakdown": breakdown.run,
    "push_to_running": deploys.run_push_to_running,
    "overhead": deploys.run_overhead,
    "burst": burst.run,
    "growth": growth.run,
    "many_hosts": many_hosts.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny, fast form (CI): checks the harness, not speed")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--redis-url", help="default $PUSHDEPLOY_BENCH_REDIS_URL or redis://127.0.0.1:6379/9")
    parser.add_argument("--json", type=Path,
                        help="results file (default bench/results/latest.json; smoke.json with --smoke; "
                             "NAME.json with --only NAME)")
    parser.add_argument("--markdown", type=Path,
                        help="page to write (default docs/benchmarks.md for a full run of every scenario)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, repositories)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: recompute the summaries and targets of a results file and "
                             "write its page (--markdown, default docs/benchmarks.md)")
    return parser.parse_args(argv)


def default_results(smoke: bool, only: list[str] | None) -> str:
    """A partial run has its own file (``--only growth``: growth.json), so it never hides the full run's."""
    if smoke:
        return "smoke.json"
    return "+".join(only) + ".json" if only else "latest.json"


def run_scenario(name: str, plan: Plan, workdir: Path, redis: Redis, url: str) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    started = time.monotonic()
    redis.flushdb()
    try:
        outcome = {"status": "ok", **SCENARIOS[name](plan, workdir / name, redis, url)}
    except (HarnessError, OSError, RuntimeError, ValueError, KeyError) as exc:
        traceback.print_exc()
        outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        redis.flushdb()
    outcome["seconds"] = round(time.monotonic() - started, 1)
    print(f"   {name}: {outcome['status']} in {outcome['seconds']:.0f} s", flush=True)
    return outcome


def render_only(path: Path, markdown: Path) -> int:
    """Rewrite a results file's summaries, targets and page from its raw rounds, measuring nothing."""
    results = json.loads(path.read_text())
    accept.resummarize(results["scenarios"].get("accept", {}))
    results["targets"] = [v.to_dict() for v in evaluate(report.with_latest(results["scenarios"]))]
    path.write_text(json.dumps(results, indent=2) + "\n")
    markdown.write_text(report.render(results, report.kept_analysis(markdown)))
    print(f"rewrote {path} and {markdown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args.render, args.markdown or ROOT / "docs" / "benchmarks.md")
    plan = SMOKE if args.smoke else FULL
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    json_path = args.json or ROOT / "bench" / "results" / default_results(args.smoke, args.only and chosen)
    full_run = not args.smoke and not args.only
    markdown = args.markdown or (ROOT / "docs" / "benchmarks.md" if full_run else None)
    url = bench_url(args.redis_url)
    try:
        redis = connect(url)
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench", *(shlex.quote(a) for a in given)])
    results: dict[str, Any] = {
        "command": command,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": plan.to_dict(),
        "redis_url": url,
        "machine": describe(redis),
        "scenarios": {},
    }
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pushdeploy-bench-"))
    try:
        for name in SCENARIOS:
            results["scenarios"][name] = (run_scenario(name, plan, workdir, redis, url) if name in chosen
                                          else {"status": "skipped"})
    finally:
        redis.flushdb()
        redis.close()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    verdicts = evaluate(report.with_latest(results["scenarios"]))
    results["targets"] = [v.to_dict() for v in verdicts]
    shown = json_path.resolve()
    results["json_path"] = str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    if markdown is not None:
        markdown.write_text(report.render(results, report.kept_analysis(markdown)))
    print("\nSpeed targets:")
    for verdict in verdicts:
        note = f" ({verdict.note})" if verdict.note else ""
        print(f"  [{verdict.word}] {verdict.target}: {verdict.measured}{note}")
    print(f"\nresults: {json_path}" + (f"; page: {markdown}" if markdown else ""))
    failed = [name for name, s in results["scenarios"].items() if s["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
