"""Quality gates: thresholds on the rates of a run's report (stats.json "rates"), checked at its end.

A gate named min_* fails when the rate is under its threshold, max_* when over. A gate whose rate
was not measured (its stage did not run) or whose threshold is empty is skipped, not passed.
"""

from __future__ import annotations

from clipcrawl.tasks.core.config import QualityGates

RATE_OF_GATE = {
    "min_download_success_rate": "download_success_rate",
    "min_clip_pass_rate": "clip_pass_rate",
    "max_clip_pass_rate": "clip_pass_rate",
    "max_duplicate_rate": "duplicate_rate",
    "max_near_duplicate_rate": "near_duplicate_rate",
    "max_failed_file_share": "failed_file_share",
}


def check_gates(rates: dict[str, float | None], gates: QualityGates) -> list[dict]:
    """One result per configured gate whose rate was measured: gate, rate, value, threshold, action,
    passed, and a message naming the gate, the measured value and the threshold."""
    results = []
    for name, rate in RATE_OF_GATE.items():
        gate = getattr(gates, name)
        value = rates.get(rate)
        if gate.threshold is None or value is None:
            continue
        lower = name.startswith("min_")
        passed = value >= gate.threshold if lower else value <= gate.threshold
        relation = ("at or over" if lower else "at or under") if passed else ("under" if lower else "over")
        message = f"quality gate {name}: {rate} {value:.3f} is {relation} the threshold {gate.threshold:.3f}" + (
            "" if passed else f" ({'run failed' if gate.action == 'fail' else 'warning'})"
        )
        results.append(
            {
                "gate": name,
                "rate": rate,
                "value": value,
                "threshold": gate.threshold,
                "action": gate.action,
                "passed": passed,
                "message": message,
            }
        )
    return results


def failures(results: list[dict], action: str = "fail") -> list[dict]:
    """The gates that did not pass and carry this action."""
    return [r for r in results if not r["passed"] and r["action"] == action]
