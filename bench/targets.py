"""The speed targets (accept throughput and latency, push to running, overhead, bursts), each
judged met, not met, or not measured (with why) from a run's results."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured
    note: str = ""

    @property
    def word(self) -> str:
        return {True: "met", False: "NOT MET", None: "not measured"}[self.met]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"verdict": self.word}


def _ok(scenarios: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = scenarios.get(name)
    return found if isinstance(found, dict) and found.get("status") == "ok" else None


def _missing(target: str, why: str) -> Verdict:
    return Verdict(target, "-", None, why)


def _per_cpu(ours: dict[str, Any], other: dict[str, Any]) -> str:
    """The same ratio from CPU spent per request, which other load on the machine hardly moves."""
    if not ours.get("cpu_ms_per_request") or not other.get("cpu_ms_per_request"):
        return ""
    return f"per CPU-second: {other['cpu_ms_per_request'] / ours['cpu_ms_per_request']:.0%}"


def accept_verdicts(scenarios: dict[str, Any]) -> list[Verdict]:
    names = ("accept ≥ 80% of the bare verify-only endpoint", "accept ≥ adnanh/webhook's throughput",
             "accept p99 < 25 ms at 32 connections")
    accept = _ok(scenarios, "accept")
    if accept is None:
        return [_missing(name, "accept scenario did not run") for name in names]
    if accept.get("load") != "wrk":
        return [_missing(name, "wrk not installed") for name in names]
    targets = accept["targets"]
    ours, bare = targets["pushdeploy"], targets["bare_flask"]
    verdicts = [Verdict(names[0], f"{ours['rps'] / bare['rps']:.0%} ({ours['rps']:.0f} vs "
                                  f"{bare['rps']:.0f} req/s)", ours["rps"] >= 0.8 * bare["rps"],
                        _per_cpu(ours, bare))]
    theirs = targets.get("adnanh_webhook", {})
    if "rps" in theirs:
        verdicts.append(Verdict(names[1], f"{ours['rps'] / theirs['rps']:.0%} ({ours['rps']:.0f} vs "
                                          f"{theirs['rps']:.0f} req/s)", ours["rps"] >= theirs["rps"],
                                _per_cpu(ours, theirs)))
    else:
        verdicts.append(_missing(names[1], "adnanh/webhook not installed"))
    verdicts.append(Verdict(names[2], f"{ours['p99_ms']:.1f} ms", ours["p99_ms"] < 25.0,
                            f"adnanh/webhook: {theirs['p99_ms']:.1f} ms" if "p99_ms" in theirs else ""))
    return verdicts


def many_hosts_verdicts(scenarios: dict[str, Any]) -> list[Verdict]:
    names = ("many hosts: all hosts (batch \"all\") in ≤ 1.5× one host's time",
             "many hosts: an incremental deploy (one file changed) sends < 1% of the release")
    found = _ok(scenarios, "many_hosts")
    if found is None:
        return [_missing(name, "many_hosts scenario did not run") for name in names]
    rows = found["rows"]
    one, most = rows[0], rows[-1]
    ratio = found["most_vs_one"]
    floor = found.get("most_floor_vs_one")
    note = (f"the hosts' CPU alone, over {found['cores']} cores: {most['first_floor_seconds']:.1f} s, "
            f"{floor:.1f}× one host's time" if floor is not None else "")
    cheapest = found.get("most_cheapest_floor_vs_one")
    if cheapest is not None:
        note += ("; " if note else "") + (
            f"the cheapest conceivable SSH rollout here (per host a new connection with OpenSSH's "
            f"default key exchange and a tar -x, nothing else): "
            f"{found['most_cheapest_floor_seconds']:.1f} s, {cheapest:.1f}×"
        )
    worst = max(rows, key=lambda r: r["incremental_share"])
    return [
        Verdict(names[0], f"{ratio:.1f}× ({most['hosts']} hosts {most['first_seconds']:.1f} s, "
                          f"{one['hosts']} host {one['first_seconds']:.1f} s)", ratio <= 1.5, note),
        Verdict(names[1], f"{worst['incremental_share']:.3%} ({worst['incremental_bytes_per_host']:,} of "
                          f"{worst['release_bytes']:,} bytes)", worst["incremental_share"] < 0.01),
    ]


def evaluate(scenarios: dict[str, Any]) -> list[Verdict]:
    verdicts = accept_verdicts(scenarios)
    latency = _ok(scenarios, "push_to_running")
    name = "push → running median < 50 ms"
    if latency is None:
        verdicts.append(_missing(name, "push_to_running scenario did not run"))
    else:
        shown = f"{latency['running_median_ms']:.1f} ms (p99 {latency['running_p99_ms']:.1f} ms)"
        verdicts.append(Verdict(name, shown, latency["running_median_ms"] < 50.0))
    overhead = _ok(scenarios, "overhead")
    names = ("no-op deployment overhead median < 500 ms (warm mirror)", "a 10,000-file repository adds < 1 s")
    if overhead is None:
        verdicts += [_missing(n, "overhead scenario did not run") for n in names]
    else:
        noop = overhead["noop_median_ms"]
        verdicts.append(Verdict(names[0], f"{noop:.0f} ms", noop < 500.0))
        base_depth = overhead["shapes"][0]["depth"]
        big = [s for s in overhead["shapes"] if s["files"] >= 10_000 and s["depth"] == base_depth]
        if big:
            verdicts.append(Verdict(names[1], f"+{big[0]['added_ms']:.0f} ms", big[0]["added_ms"] < 1000.0))
        else:
            verdicts.append(_missing(names[1], "no 10,000-file shape in this plan"))
    burst = _ok(scenarios, "burst")
    name = "burst: every environment live, ≤ 2 deployments each"
    if burst is None:
        verdicts.append(_missing(name, "burst scenario did not run"))
    else:
        verdicts.append(Verdict(
            name,
            f"{burst['environments']} live in {burst['all_live_s']:.1f} s; {burst['deployments_ran']} ran of "
            f"{burst['deliveries']} deliveries, at most {burst['max_ran_per_environment']} per environment",
            burst["max_ran_per_environment"] <= 2,
        ))
    return verdicts + many_hosts_verdicts(scenarios)
