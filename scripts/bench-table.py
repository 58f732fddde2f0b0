"""Turns scripts/bench results (JSON lines) into the results table of docs/benchmarks.md.

Replaces the text between <!-- bench:start --> and <!-- bench:end -->.
"""
import json
import platform
import subprocess
import sys


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.0f} GiB RAM"
    except OSError:
        pass
    return f"{cores} cores ({cpu}), {mem}, {platform.system()} {platform.release()}"


def cpu(x):
    """CPU per message (and per delivery) of each tier, if measured."""
    parts = []
    for tier in ("gateway", "worker", "redis"):
        per_msg = x.get(f"cpu_{tier}_us_per_msg")
        if per_msg is None:
            continue
        per_del = x.get(f"cpu_{tier}_us_per_delivery")
        pct = x.get(f"cpu_{tier}_pct")
        text = f"{tier} {per_msg} µs/msg"
        if per_del is not None and not x.get("scenario", "").startswith("persist"):
            text += f", {per_del} µs/delivery"
        parts.append(f"{text} ({pct}% of a core)")
    return "; ".join(parts) or "—"


def row(name, r):
    x = r
    if name.startswith("conns"):
        return (f"| {name} | {x.get('connected')} connected, {x.get('failed')} failed | "
                f"{x.get('connects_per_s')} connects/s | RSS {x.get('gateway_rss_before_mib')} → "
                f"{x.get('gateway_rss_after_mib')} MiB = **{x.get('gateway_rss_per_conn_kib')} KiB/conn** | — | — |")
    if name.startswith("persist"):
        return (f"| {name} | {x['sent']} messages, {x.get('rooms')} rooms | "
                f"**{x.get('persisted_per_s')} msg/s** persisted+published | "
                f"append {x.get('append_seconds')} s, total {x['duration_s']:.2f} s | — | {cpu(x)} |")
    ack = ""
    if "ack_p99_ms" in x:
        ack = f"; ack p50 {x['ack_p50_ms']} / p99 {x['ack_p99_ms']} ms"
    mix = ""
    if "typing_sent" in x:
        mix = (f", plus {x['typing_sent']} typing and {x['reactions_sent']} reactions "
               f"({x['reactions_answered']} answered)")
    return (f"| {name} | {x.get('shape', '')}; sent {x['sent']}, acked {x['acked']}{mix} | "
            f"**{x['deliveries_per_s']:.0f} deliveries/s** ({x.get('messages_per_s', '?')} msg/s) | p50 {x['p50_ms']:.2f} / p90 {x['p90_ms']:.2f} / "
            f"p99 **{x['p99_ms']:.2f}** / p99.9 {x['p999_ms']:.2f} / max {x['max_ms']:.2f} ms{ack} | "
            f"lost {x['lost']}, dup {x['duplicated']}, ooo {x['out_of_order']} | {cpu(x)} |")


def budget(rows):
    """The per-hop latency table of the fanout-5k row (5k deliveries/s)."""
    r = next((r["r"] for r in rows if r["name"] == "fanout-5k"), None)
    if not r or r.get("append_mean_ms") is None:
        return []
    a, p, q = r["append_mean_ms"], r["publish_mean_ms"], r["queued_mean_ms"]
    return [
        "",
        "Latency budget per hop at 5k deliveries/s (`fanout-5k`; means from the",
        "services' histograms over the run, all measured from the gateway's stamp):",
        "",
        "| hop | mean |",
        "|---|---|",
        f"| gateway stamp → `XADD` answered (append round trip) | {a:.3f} ms |",
        f"| → worker woke, persisted, published (stamp → publish: {p:.3f} ms) | {p - a:.3f} ms |",
        f"| → gateway got it from pub/sub, queued to connections (stamp → queued: {q:.3f} ms) | {q - p:.3f} ms |",
        f"| client send → stamp, queue → socket → client read (client p50 {r['p50_ms']:.2f} ms − stamp → queued) | {r['p50_ms'] - q:.3f} ms |",
        f"| **end to end at the client** | p50 {r['p50_ms']:.2f} ms, p99 **{r['p99_ms']:.2f}** ms |",
    ]


def main(results, readme):
    rows = [json.loads(l) for l in open(results) if l.strip()]
    lines = [
        "<!-- bench:start -->",
        f"Machine: {machine()}; Redis, worker, three gateways and the load generator all on it.",
        "Command: `scripts/bench` (raw results: `.run/bench/results.jsonl`).",
        "",
        "| scenario | shape | throughput | latency / memory | correctness | CPU per message and delivery |",
        "|---|---|---|---|---|---|",
    ]
    lines += [row(r["name"], r["r"]) for r in rows]
    lines += budget(rows)
    lines += [
        "",
        "Exact commands: all rows come from one run of `scripts/bench`",
        "(`BENCH_QUICK=1 scripts/bench` runs smaller sizes as a smoke run). It starts",
        "its own Redis, worker and gateways on free ports; below, their addresses and",
        "PIDs appear as `$GW1`…`$GW3` (gateway WebSocket URLs), `$REDIS_URL`,",
        "`$WORKER_METRICS` and `$GW1_PID`…`$GW3_PID`; `$TOKEN` is an HS256 JWT the",
        "script mints for the `-auth` rows, whose gateways run with `JWT_SECRET` set.",
        "",
    ]
    lines += [f"- `{r['name']}`: `{r['cmd']}`" for r in rows]
    lines.append("<!-- bench:end -->")
    text = open(readme).read()
    start, end = text.index("<!-- bench:start -->"), text.index("<!-- bench:end -->") + len("<!-- bench:end -->")
    open(readme, "w").write(text[:start] + "\n".join(lines) + text[end:])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
