import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import bench_scheduler as B
from grid import capture_planner, captured

from scheduler import SchedulerConfig

capture_planner()


def one(name, cfg, sizes, u, nodes=1000, lag=0):
    sc = B.Scenario(nodes, nodes * 10, sizes, u, lag)
    r = B.run(sc, "mycelial", 1, churn=False, config=cfg)
    p = captured["p"]
    # zone skew of soft workloads: from planner's wl_zone
    skews = []
    for _w, zc in p.wl_zone.items():
        tot = sum(zc.values())
        if tot < 4:
            continue
        counts = [zc.get(z, 0) for z in range(4)]
        skews.append(max(counts) - min(counts))
    zs = sum(skews) / len(skews)
    print(
        f"{name:28s} {sizes[:4]} {int(u * 100)}% lag{lag} cv={r.cv:.4f} fail={100 * r.failed:.2f} strand={100 * r.stranded:.2f} hot={100 * r.hot:.2f} mm={r.max_mean:.3f} coloc={100 * r.colocated:.1f} zskew={zs:.2f} pps={r.per_second:,.0f}",
        flush=True,
    )


configs = {
    "default": SchedulerConfig(),
    "za25": SchedulerConfig(zone_anti_affinity=25),
    "za25 d20": SchedulerConfig(zone_anti_affinity=25, sample=20),
    "za25 d30": SchedulerConfig(zone_anti_affinity=25, sample=30),
    "za60 d20": SchedulerConfig(zone_anti_affinity=60, sample=20),
}
for sizes in ("mixed", "homogeneous"):
    for u in (0.5, 0.7, 0.85, 0.95):
        for name, cfg in configs.items():
            one(name, cfg, sizes, u)
