#!/usr/bin/env python3
"""The table of scripts/bench-bigroom: the connect storm, memory, the idle
room, and one message delivered to every member, from the RESULT lines of
the member processes and the publisher and the figures the script took.
Prints Markdown (a metric | value table and the exact commands)."""

import glob
import json
import sys

(d, procs, members, gws, msgs, interval, rss0, rss1, t0, c0, t1, c1, t2, c2, hz,
 load0, load1, load2, mcmd, pcmd) = sys.argv[1:]


def result(path):
    return json.loads([line[7:] for line in open(path) if line.startswith("RESULT ")][-1])


mem = [result(f) for f in sorted(glob.glob(f"{d}/members-*.out"))]
pub = result(f"{d}/publish.out")
conn = sum(m["connected"] for m in mem)
failed = sum(m["failed"] for m in mem)
secs = max(float(m["connect_seconds"]) for m in mem)
total = lambda k: sum(m[k] for m in mem)
per_member = (int(rss1) - int(rss0)) * 1024 / max(conn, 1)
hz = int(hz)
idle_s, idle_cpu = float(t1) - float(t0), (int(c1) - int(c0)) / hz
msg_s, msg_cpu = float(t2) - float(t1), (int(c2) - int(c1)) / hz
extra_cpu = msg_cpu - idle_cpu / idle_s * msg_s
got = total("received_deliveries")

rows = [
    ("members", f"{conn:,} joined, {failed} failed (of {int(members):,}), one room, "
                f"{gws} gateways, {procs} client processes"),
    ("connect storm", f"**{conn / secs:,.0f} joins/s** ({secs:.1f} s until the last `history` frame; "
                      + ", ".join(f"{float(m['connects_per_s']):,.0f}/s" for m in mem) + " per process)"),
    ("gateway RSS (all gateways)", f"{int(rss0) / 1024:.1f} → {int(rss1) / 1024:.1f} MiB = **{per_member:,.0f} B per member**"),
    ("gateway CPU, idle room", f"{100 * idle_cpu / idle_s:.1f} % of a core over {idle_s:.1f} s"),
    ("messages", f"{pub['sent']} sent {interval} ms apart, {pub['acked']} acked"),
    ("deliveries", f"expected {total('expected_deliveries'):,}, received {got:,}: "
                   f"lost **{total('lost')}**, duplicated {total('duplicated')}, out of order {total('out_of_order')}, "
                   f"seq regressions {total('seq_regressions')}"),
    ("latency per delivery (send → member read)",
     "; ".join(f"process {i + 1}: p50 {m['p50_ms']:.0f} / p99 **{m['p99_ms']:.0f}** / max {m['max_ms']:.0f} ms"
               for i, m in enumerate(mem))),
    ("send → last member, per message", "; ".join(f"process {i + 1}: {m['last_member_ms_per_message']} ms"
                                                  for i, m in enumerate(mem))),
    ("gateway CPU, message phase", f"{msg_cpu:.2f} s over {msg_s:.1f} s; above idle {extra_cpu:.2f} s = "
                                   f"**{extra_cpu * 1e6 / max(got, 1):.1f} µs per delivery**"),
    ("load average (1/5/15 min): start; joined; end", f"{load0}; {load1}; {load2}"),
]
print("| | |")
print("|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
print()
print(f"Command: `MEMBERS={members} GATEWAYS={gws} PROCS={procs} MESSAGES={msgs} INTERVAL_MS={interval} "
      f"scripts/bench-bigroom`: {procs} × `{mcmd}` at once (`$GWS`: every gateway's URL), "
      f"then `{pcmd}`.")
