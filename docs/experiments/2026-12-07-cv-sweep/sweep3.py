import itertools
import sys

sys.path[:0] = [
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / p) for p in ("scripts", ".")
]
import variants as V
from grid import mixed_1k_row

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
    row = mixed_1k_row(cfg, mean=True)
    print(
        f"bw={bw} fw={fw:3d} hw={hw:2d} {mode:5s} d={samp:2d} za={za:3d} | " + row,
        flush=True,
    )
