import itertools
import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import variants as V
from grid import mixed_1k_row

from scheduler import SchedulerConfig

for fw, hw, mode, samp, idx in itertools.product(
    (8, 16, 40, 100), (0, 5, 20), ("after", "now"), (0, 30), (3,)
):
    if hw == 0 and mode == "now":
        continue
    V.MODE["hr"] = mode
    cfg = SchedulerConfig(fit_weight=fw, high_water_weight=hw, sample=samp, index_candidates=idx)
    row = mixed_1k_row(cfg)
    print(f"fw={fw:3d} hw={hw:2d} {mode:5s} d={samp:2d} | " + row, flush=True)
