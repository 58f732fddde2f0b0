#!/usr/bin/env python3
"""The capacity model of docs/capacity.md, fed by scripts/bench-capacity.

Reads the results (one JSON line per row), fits the per-process figures on
the calibration rows (`cal-*`), predicts the check rows (`check-*`) and
prints, as Markdown: the figures, prediction against measurement with the
error in %, and the fleet the figures predict for a target load.

    python3 scripts/capacity-check.py .run/bench-capacity/results.jsonl
"""

import json
import math
import sys

# The target of issue 26: 1M concurrent connections, 1M deliveries/s, in
# rooms of ROOM members online (the fanout rows' shape), at UTIL of a core.
CONNS, DELIVERIES, ROOM, UTIL = 1_000_000, 1_000_000, 50, 0.6
GW_CORES, GW_MEM_GIB, GW_CONNS_MAX = 2, 4, 100_000


def load(path):
    return {row["name"]: row for row in map(json.loads, open(path))}


def f(r, key):
    return float(r["r"][key])


def fit(rows, tier, unit):
    """pct of a core = idle + k * rate, through the two calibration rows."""
    (x1, y1), (x2, y2) = [(f(r, unit), f(r, f"cpu_{tier}_pct")) for r in rows]
    k = (y1 - y2) / (x1 - x2)
    return y1 - k * x1, k  # idle %, % of a core per (unit/s)


def main():
    rows = load(sys.argv[1])
    cal = [rows["cal-fanout-50k"], rows["cal-fanout-5k"]]
    model = {
        "gateway": ("deliveries_per_s",) + fit(cal, "gateway", "deliveries_per_s"),
        "worker": ("messages_per_s",) + fit(cal, "worker", "messages_per_s"),
        "redis": ("messages_per_s",) + fit(cal, "redis", "messages_per_s"),
    }
    conn = rows["cal-conns-5k"]["r"]
    per_conn = float(conn["bytes_per_conn"])
    persist = rows["cal-persist"]["r"]

    print("### Per-process figures (calibration rows)\n")
    print("| figure | value | from |")
    print("|---|---|---|")
    for tier, (unit, idle, k) in model.items():
        what = "delivery" if unit == "deliveries_per_s" else "message"
        print(f"| {tier}: CPU per {what} (marginal) | {k * 1e4:.2f} µs | cal-fanout-50k and cal-fanout-5k |")
        whose = "both gateways together" if tier == "gateway" else "the process"
        print(f"| {tier}: idle CPU ({whose}) | {idle:.1f} % of a core | the same |")
    print(f"| gateway: bytes per idle anonymous connection | {per_conn:,.0f} B | cal-conns-5k |")
    print(f"| worker: persisted and published messages/s (one worker, pipelined appends) | {persist.get('persisted_per_s', '?')} | cal-persist |")
    for tier in ("worker", "redis"):
        key = f"cpu_{tier}_us_per_msg"
        if key in persist:
            print(f"| {tier}: CPU per persisted message (batched) | {persist[key]} µs | cal-persist |")

    print("\n### Checks: prediction against measurement\n")
    print("| check | predicted | measured | error | load average (before; after) |")
    print("|---|---|---|---|---|")
    checks = []
    for name, row in rows.items():
        if not name.startswith("check-fanout"):
            continue
        for tier, (unit, idle, k) in model.items():
            pred = idle + k * f(row, unit)
            meas = f(row, f"cpu_{tier}_pct")
            checks.append((f"{name}: {tier} CPU at {f(row, unit):,.0f} {unit.replace('_per_s', '')}/s",
                           f"{pred:.1f} %", f"{meas:.1f} %", pred, meas, row["load"]))
    c = rows["check-conns-15k"]
    r = c["r"]
    grow_pred = float(r["connected"]) * per_conn / 1048576
    grow_meas = float(r["gateway_rss_after_mib"]) - float(r["gateway_rss_before_mib"])
    checks.append((f"check-conns-15k: gateway RSS growth at {r['connected']} connections",
                   f"{grow_pred:.1f} MiB", f"{grow_meas:.1f} MiB", grow_pred, grow_meas, c["load"]))
    for what, p, m, pv, mv, ld in checks:
        err = 100 * (pv - mv) / mv if mv else float("nan")
        print(f"| {what} | {p} | {m} | {err:+.0f} % | {' '.join(ld[0].split())}; {' '.join(ld[1])} |")

    print(f"\n### The fleet for {CONNS:,} connections and {DELIVERIES:,} deliveries/s\n")
    msgs = DELIVERIES / ROOM
    _, gi, gk = model["gateway"]
    _, _, wk = model["worker"]
    _, _, rk = model["redis"]
    gw_by_cpu = math.ceil(DELIVERIES * gk / 100 / (GW_CORES * UTIL))
    gw_by_mem = math.ceil(CONNS * per_conn / (GW_MEM_GIB * 2**30 * UTIL))
    gw_by_conns = math.ceil(CONNS / GW_CONNS_MAX)
    gateways = max(gw_by_cpu, gw_by_mem, gw_by_conns)
    worker_cores = msgs * wk / 100 / UTIL
    masters = math.ceil(msgs * rk / 100 / UTIL)
    print("| tier | formula | figure |")
    print("|---|---|---|")
    print(f"| messages/s | D / room size = {DELIVERIES:,} / {ROOM} | {msgs:,.0f} |")
    print(f"| gateways by CPU | D × {gk * 1e4:.2f} µs / ({GW_CORES} cores × {UTIL}) | {gw_by_cpu} |")
    print(f"| gateways by memory | C × {per_conn:,.0f} B / ({GW_MEM_GIB} GiB × {UTIL}) | {gw_by_mem} |")
    print(f"| gateways by connections | C / {GW_CONNS_MAX:,} | {gw_by_conns} |")
    print(f"| **gateways** | the largest of the three | **{gateways}** |")
    print(f"| **worker cores** | M × {wk * 1e4:.1f} µs / {UTIL} | **{worker_cores:.1f}** |")
    print(f"| **Redis masters** (one core each, unbatched cost) | M × {rk * 1e4:.1f} µs / {UTIL} | **{masters}** |")
    batched = float(persist.get("cpu_redis_us_per_msg", "nan"))
    low = math.ceil(msgs * batched / 1e6 / UTIL)
    print(f"| Redis masters, batched cost (lower bound) | M × {batched:.1f} µs / {UTIL} | {low} |")
    print(f"| **`STREAM_SHARDS`** | 8 × masters (8 shards per master; ≥ 2 per worker core) | **{8 * masters}** |")


if __name__ == "__main__":
    main()
