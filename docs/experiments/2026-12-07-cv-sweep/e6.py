import sys

import variants as V
from grid import go

from scheduler import SchedulerConfig

for spec in sys.argv[1:]:
    parts = dict(kv.split("=") for kv in spec.split(","))
    V.MODE.clear()
    V.MODE["hr"] = parts.pop("hr", "after")
    V.MODE["bal"] = parts.pop("bal", "lin")
    for k in ("level", "margin", "wl", "S", "G", "div"):
        if k in parts:
            V.MODE[k] = int(parts.pop(k))
    cfg = SchedulerConfig(**{k: int(v) for k, v in parts.items()})
    go(spec, cfg=cfg, sizes=("mixed",), utils=(0.85, 0.95))
