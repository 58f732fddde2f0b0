"""Per-hop latency budget of a bench run, from the services' own histograms.

  bench-hops.py snap OUT.json METRICS_ADDR...     # sums and counts now
  bench-hops.py diff BEFORE.json AFTER.json       # mean per hop between the two

Every hop is measured from the gateway's stamp (`stamped_us`, taken when
the message frame is accepted), so each mean includes the hops before it:
  append:   stamp -> XADD answered           chat_gateway_stream_append_seconds
  publish:  stamp -> worker published        chat_worker_publish_latency_seconds
  queued:   stamp -> in the connection queue chat_gateway_delivery_latency_seconds
"""
import json
import sys
import urllib.request

SERIES = {
    "append": "chat_gateway_stream_append_seconds",
    "publish": "chat_worker_publish_latency_seconds",
    "queued": "chat_gateway_delivery_latency_seconds",
}


def snap(out, addrs):
    totals = {k: [0.0, 0.0] for k in SERIES}
    for addr in addrs:
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
        for line in body.splitlines():
            for key, name in SERIES.items():
                for i, suffix in enumerate(("_sum", "_count")):
                    if line.startswith(name + suffix + " "):
                        totals[key][i] += float(line.split()[1])
    json.dump(totals, open(out, "w"))


def diff(before, after):
    b, a = json.load(open(before)), json.load(open(after))
    means = {}
    for k in SERIES:
        n = a[k][1] - b[k][1]
        means[k + "_mean_ms"] = round(1000 * (a[k][0] - b[k][0]) / n, 3) if n > 0 else None
    print(json.dumps(means))


if __name__ == "__main__":
    if sys.argv[1] == "snap":
        snap(sys.argv[2], sys.argv[3:])
    else:
        diff(sys.argv[2], sys.argv[3])
