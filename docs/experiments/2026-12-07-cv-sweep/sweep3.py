import itertools
import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import variants as V
from bench_scheduler import Scenario, run

from scheduler import SchedulerConfig

for bw, fw, hw, mode, samp, za in itertools.product(
    (0,), (4, 100), (0, 5, 20), ("after", "now"), (0, 30), (25, 250)
):
    if hw == 0 and mode == "now":
        continue
    V.MODE.clear()
    V.MODE["hr"] = mode
    V.MODE["bal"] = "lin"
    cfg = SchedulerConfig(
        balance_weight=bw, fit_weight=fw, high_water_weight=hw, sample=samp, zone_anti_affinity=za
    )
    row = []
    for u, goal in ((0.85, 0.0199), (0.95, 0.0124)):
        r = run(Scenario(1000, 10000, "mixed", u, 0), "mycelial", 1, churn=False, config=cfg)
        row.append(
            f"{int(u * 100)}%: cv={r.cv:.4f}{'*' if r.cv <= goal else ' '} fail={100 * r.failed:.2f} strand={100 * r.stranded:.2f} hot={100 * r.hot:.2f} mean={100 * r.mean_util:.1f}"
        )
    print(
        f"bw={bw} fw={fw:3d} hw={hw:2d} {mode:5s} d={samp:2d} za={za:3d} | " + " | ".join(row),
        flush=True,
    )
