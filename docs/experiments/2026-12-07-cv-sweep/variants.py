import sys

sys.path[:0] = [str(__import__("pathlib").Path(__file__).resolve().parents[3])]
import scheduler.engine as E

ORIG = E.Planner._best_scored
MODE = {"hr": "after"}


def patched(self, request, candidates, rh, best=-1, best_total=0, best_after=0):
    cfg = self.config
    rc, rm, rp = request.resources.as_tuple()
    free_c, free_m, free_p = self.free_c, self.free_m, self.free_p
    cap_c, cap_m, cap_p = self.cap_c, self.cap_m, self.cap_p
    credit_term, dom_now, node_hash = self.credit_term, self.dom, self.node_hash
    wc, wb, wf = cfg.credit_weight, cfg.balance_weight, cfg.fit_weight
    high, wh = cfg.high_water, cfg.high_water_weight
    per_node = self.wl_node.get(request.workload)
    per_zone = self.wl_zone.get(request.workload)
    aa_node, aa_zone, zone_of = cfg.node_anti_affinity, cfg.zone_anti_affinity, self.zone_of
    mode = MODE["hr"]
    for i in candidates:
        cc, cm, cp = cap_c[i], cap_m[i], cap_p[i]
        uc = (cc - free_c[i] + rc) * 1000 // cc
        um = (cm - free_m[i] + rm) * 1000 // cm
        up = (cp - free_p[i] + rp) * 1000 // cp
        dom = max(uc, um, up)
        now = dom_now[i]
        gap = abs(uc - um)
        bm = MODE.get("bal", "lin")
        if bm == "lin":
            total = wb * (1000 - gap)
        elif bm == "step":
            total = MODE.get("S", 400) if gap <= MODE.get("G", 100) else 0
        elif bm == "step2":  # step plus a small linear term
            total = (MODE.get("S", 400) if gap <= MODE.get("G", 100) else 0) + (
                1000 - gap
            ) // MODE.get("div", 10)
        elif bm == "dgap":  # change in gap (only worsening counts)
            gn = abs((cc - free_c[i]) * 1000 // cc - (cm - free_m[i]) * 1000 // cm)
            total = -MODE.get("S", 4) * max(0, gap - gn) if gap > MODE.get("G", 100) else 0
        if mode == "after":
            if dom > high:
                total -= wh * (dom - high) ** 2 // 100
        elif mode == "mid":
            m = (dom + now) // 2
            if m > high:
                total -= wh * (m - high) ** 2 // 100
        elif mode == "now":
            if now > high:
                total -= wh * (now - high) ** 2 // 100
        elif mode == "marg":
            ea = max(0, dom - high)
            en = max(0, now - high)
            if ea and dom > now:
                total -= MODE.get("k", 20) * (ea * ea - en * en) // (dom - now)
        elif mode == "marg2":  # marginal plus a cap on filling past the mark by a big step
            ea = max(0, dom - high)
            en = max(0, now - high)
            if ea and dom > now:
                total -= MODE.get("k", 20) * (ea * ea - en * en) // (dom - now)
                if dom > MODE.get("hard", 980):
                    total -= wh * (dom - MODE.get("hard", 980)) ** 2 // 100
        total += wf * (1000 - now)
        if wc:
            total += wc * credit_term[i]
        if per_node:
            total -= aa_node * per_node.get(i, 0)
        if per_zone:
            z = zone_of[i]
            if z >= 0:
                total -= aa_zone * per_zone.get(z, 0)
        if (
            best < 0
            or total > best_total
            or (total == best_total and node_hash[i] ^ rh > node_hash[best] ^ rh)
        ):
            best, best_total, best_after = i, total, dom
    return best, best_total, best_after


E.Planner._best_scored = patched

ORIG_PB = E.Planner.place_batch


def pb(self, requests, **kw):
    if MODE.get("level"):
        usable = [i for i in range(self.n) if self.usable[i]]
        mean = sum(self.dom[i] for i in usable) // max(1, len(usable))
        sums = [0, 0, 0]
        for r in requests:
            c, m, p = r.resources.as_tuple()
            sums[0] += c
            sums[1] += m
            sums[2] += p
        inc = max(sums[d] * 1000 // (self.total[d] or 1) for d in range(3))
        self._level = mean + inc + MODE.get("margin", 20)
    return ORIG_PB(self, requests, **kw)


E.Planner.place_batch = pb

_inner = patched


def patched2(self, request, candidates, rh, best=-1, best_total=0, best_after=0):
    if not MODE.get("level"):
        return _inner(self, request, candidates, rh, best, best_total, best_after)
    # Wrap: compute with level penalty by temporarily adjusting via a second pass.
    T = self._level
    wl = MODE.get("wl", 20)
    rc, rm, rp = request.resources.as_tuple()
    b, bt, ba = best, best_total, best_after
    for i in candidates:
        j, t, a = _inner(self, request, [i], rh)
        if a > T:
            t -= wl * (a - T) ** 2 // 100
        if b < 0 or t > bt or (t == bt and self.node_hash[i] ^ rh > self.node_hash[b] ^ rh):
            b, bt, ba = i, t, a
    return b, bt, ba


E.Planner._best_scored = patched2
