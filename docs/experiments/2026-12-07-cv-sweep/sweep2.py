import itertools
import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import variants as V
from bench_scheduler import Scenario, run

from scheduler import SchedulerConfig

for za, fw, hw, mode, samp in itertools.product(
    (0, 25), (4, 8, 16, 40), (5, 20), ("after", "now", "marg"), (0, 30)
):
    V.MODE["hr"] = mode
    cfg = SchedulerConfig(fit_weight=fw, high_water_weight=hw, sample=samp, zone_anti_affinity=za)
    row = []
    for u, goal in ((0.85, 0.0199), (0.95, 0.0124)):
        r = run(Scenario(1000, 10000, "mixed", u, 0), "mycelial", 1, churn=False, config=cfg)
        row.append(
            f"{int(u * 100)}%: cv={r.cv:.4f}{'*' if r.cv <= goal else ' '} fail={100 * r.failed:.2f} strand={100 * r.stranded:.2f} hot={100 * r.hot:.2f}"
        )
    print(
        f"za={za:2d} fw={fw:3d} hw={hw:2d} {mode:5s} d={samp:2d} | " + " | ".join(row), flush=True
    )
