import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
from bench_scheduler import Scenario, run

from scheduler import SchedulerConfig


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


if __name__ == "__main__":
    pass
