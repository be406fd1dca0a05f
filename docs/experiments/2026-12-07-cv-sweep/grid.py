import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import bench_scheduler
from bench_scheduler import Scenario, run

from scheduler import SchedulerConfig

#: The planner of the latest bench run (``capture_planner`` fills it).
captured = {}


def capture_planner():
    """Keep each planner the bench builds in ``captured["p"]``, to read its nodes after
    a run (per-class utilisation, zone skew)."""
    make = bench_scheduler.Planner

    def keep(*args, **kwargs):
        captured["p"] = make(*args, **kwargs)
        return captured["p"]

    bench_scheduler.Planner = keep


def mixed_1k_row(cfg, *, mean=False):
    """One sweep row: 1k mixed nodes at 85% and 95%, CV marked ``*`` within the goal."""
    row = []
    for u, goal in ((0.85, 0.0199), (0.95, 0.0124)):
        r = run(Scenario(1000, 10000, "mixed", u, 0), "mycelial", 1, churn=False, config=cfg)
        text = (
            f"{int(u * 100)}%: cv={r.cv:.4f}{'*' if r.cv <= goal else ' '} "
            f"fail={100 * r.failed:.2f} strand={100 * r.stranded:.2f} hot={100 * r.hot:.2f}"
        )
        row.append(text + (f" mean={100 * r.mean_util:.1f}" if mean else ""))
    return " | ".join(row)


def go(
    name,
    strategy="mycelial",
    cfg=None,
    nodes=1000,
    reps=10000,
    sizes=("mixed", "homogeneous"),
    utils=(0.5, 0.7, 0.85, 0.95),
    lag=0,
):
    out = []
    for s in sizes:
        for u in utils:
            sc = Scenario(nodes, reps, s, u, lag)
            r = run(sc, strategy, 1, churn=False, config=cfg or SchedulerConfig())
            out.append((s, u, r))
            print(
                f"{name:18s} {s[:4]} {int(u * 100)}% cv={r.cv:.4f} fail={100 * r.failed:.2f} strand={100 * r.stranded:.2f} hot={100 * r.hot:.2f} mean={100 * r.mean_util:.1f} mm={r.max_mean:.3f} AA={r.aa_violations}",
                flush=True,
            )
    return out
