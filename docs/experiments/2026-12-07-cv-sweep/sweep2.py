import itertools
import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import variants as V
from grid import mixed_1k_row

from scheduler import SchedulerConfig

for za, fw, hw, mode, samp in itertools.product(
    (0, 25), (4, 8, 16, 40), (5, 20), ("after", "now", "marg"), (0, 30)
):
    V.MODE["hr"] = mode
    cfg = SchedulerConfig(fit_weight=fw, high_water_weight=hw, sample=samp, zone_anti_affinity=za)
    row = mixed_1k_row(cfg)
    print(f"za={za:2d} fw={fw:3d} hw={hw:2d} {mode:5s} d={samp:2d} | " + row, flush=True)
