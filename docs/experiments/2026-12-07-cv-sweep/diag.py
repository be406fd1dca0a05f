import statistics as st
import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import bench_scheduler as B
from grid import capture_planner, captured

from scheduler import SchedulerConfig

capture_planner()


def diag(name, strategy="mycelial", cfg=None, util=0.85, nodes=1000):
    r = B.run(
        B.Scenario(nodes, nodes * 10, "mixed", util, 0),
        strategy,
        1,
        churn=False,
        config=cfg or SchedulerConfig(),
    )
    p = captured["p"]
    cls = {}
    for i in range(p.n):
        key = (p.cap_c[i] // 1000, p.cap_m[i] // p.cap_c[i] * 1000 >> 30)
        uc = 1 - p.free_c[i] / p.cap_c[i]
        um = 1 - p.free_m[i] / p.cap_m[i]
        cls.setdefault(key, []).append((max(uc, um) * 100, uc * 100, um * 100))
    allu = [x[0] for v in cls.values() for x in v]
    m = st.fmean(allu)
    print(
        f"== {name} util={util} cv={r.cv:.4f} mean={m:.1f} var={st.pvariance(allu):.2f} fail={100 * r.failed:.2f}"
    )
    between = sum(len(v) * (st.fmean(x[0] for x in v) - m) ** 2 for v in cls.values()) / len(allu)
    print(f"   between-class var {between:.2f}")
    for k in sorted(cls):
        v = cls[k]
        d = [x[0] for x in v]
        print(
            f"   {k[0]:2d}c {k[1]}G/c n={len(v):3d} dom={st.fmean(d):5.1f}±{st.pstdev(d):4.1f} cpu={st.fmean(x[1] for x in v):5.1f} mem={st.fmean(x[2] for x in v):5.1f}"
        )


if __name__ == "__main__":
    diag("default")
    diag("least-loaded", "least-loaded")
