"""Helpers the benchmark scripts share to summarise `loadtest --json` runs.

Each run is a dict from `loadtest --json`, plus `gw_cpu_us` from lib.sh's
`measure`. Rounds are summarised as medians with their min-max range.
"""
import statistics


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def rng(runs, key, fmt):
    return f"{min(r[key] for r in runs):{fmt}}-{max(r[key] for r in runs):{fmt}}"


def cells(runs):
    """requests/s (range) | p50 | p99 (range) | CPU µs/request (range)"""
    return (
        f"{med(runs, 'rps'):.0f} ({rng(runs, 'rps', '.0f')}) | {med(runs, 'p50_ms'):.2f} | "
        f"{med(runs, 'p99_ms'):.2f} ({rng(runs, 'p99_ms', '.2f')}) | "
        f"{med(runs, 'gw_cpu_us'):.1f} ({rng(runs, 'gw_cpu_us', '.1f')})"
    )


def share(runs, status):
    """The share of all requests answered with `status` (a string: "200")."""
    total = sum(r["requests"] for r in runs)
    return sum(r["statuses"].get(status, 0) for r in runs) / max(total, 1)


def noisy(runs, key="rps", tolerance=0.15):
    """Whether any run's `key` lies further than `tolerance` from the median."""
    m = med(runs, key)
    return any(abs(r[key] - m) > tolerance * m for r in runs)
