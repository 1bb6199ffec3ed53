#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: parse iperf3 and ping output, summarise samples.

Subcommands (all read files the benchmark wrote and print to stdout):

  iperf FILE            iperf3 -J output -> "BITS_PER_SECOND BYTES" (receiver side)
  ping FILE             ping output -> "P50_MS P99_MS RECEIVED SENT"
  cpu PID...            sum of utime+stime of the PIDs, in clock ticks
  mem PID FIELD         FIELD (VmRSS, VmHWM) of /proc/PID/status, in KiB
  report SAMPLES META [--json FILE]
                        the table (and optional JSON) from the TSV of samples

Only the Python standard library is used, so a fresh machine needs nothing more.
"""

import json
import math
import statistics
import sys

# Rows of the table: metric key, label, unit, how the stt-tun figure compares with the
# underlay's ("ratio" = tunnel/underlay, "delta" = tunnel - underlay, None = no
# underlay figure), and a format for one value.
METRICS = [
    ("tcp1_gbps", "TCP, 1 stream", "Gbit/s", "ratio", "{:.2f}"),
    ("tcp4_gbps", "TCP, 4 streams", "Gbit/s", "ratio", "{:.2f}"),
    ("rtt_p50_ms", "ping RTT p50", "ms", "delta", "{:.3f}"),
    ("rtt_p99_ms", "ping RTT p99", "ms", "delta", "{:.3f}"),
    ("cpu1_s_per_gb", "daemon CPU, 1 stream", "CPU-s/GB", None, "{:.2f}"),
    ("cpu4_s_per_gb", "daemon CPU, 4 streams", "CPU-s/GB", None, "{:.2f}"),
    ("relay_cpu1_s_per_gb", "relay CPU, 1 stream", "CPU-s/GB", None, "{:.2f}"),
    ("relay_cpu4_s_per_gb", "relay CPU, 4 streams", "CPU-s/GB", None, "{:.2f}"),
    ("relay_fwd1_per_byte", "relay forwarded, 1 stream", "B/B", None, "{:.3f}"),
    ("relay_fwd4_per_byte", "relay forwarded, 4 streams", "B/B", None, "{:.3f}"),
    ("idle_rss_a_mib", "idle RSS, daemon A", "MiB", None, "{:.1f}"),
    ("idle_rss_b_mib", "idle RSS, daemon B", "MiB", None, "{:.1f}"),
    ("idle_rss_r_mib", "idle RSS, relay", "MiB", None, "{:.1f}"),
    ("peak_rss_a_mib", "peak RSS, daemon A", "MiB", None, "{:.1f}"),
    ("peak_rss_b_mib", "peak RSS, daemon B", "MiB", None, "{:.1f}"),
    ("peak_rss_r_mib", "peak RSS, relay", "MiB", None, "{:.1f}"),
]

# The relay path's daemon CPU rows are its two ends (A and B); its relay rows are R's
# daemon, per GB that iperf3 received through it.
PATHS = [("underlay", "underlay"), ("udp", "stt-tun UDP"), ("ws", "stt-tun WebSocket"), ("relay", "stt-tun relay")]


def cmd_iperf(path):
    with open(path) as f:
        data = json.load(f)
    if "error" in data:
        raise SystemExit("iperf3: " + str(data["error"]))
    end = data["end"]
    recv = end.get("sum_received") or end["sum"]
    print("%.0f %d" % (recv["bits_per_second"], recv["bytes"]))


def percentile(values, p):
    """Nearest-rank percentile: the smallest value with at least p% at or below it."""
    s = sorted(values)
    k = max(0, math.ceil(p / 100.0 * len(s)) - 1)
    return s[k]


def cmd_ping(path):
    rtts = []
    sent = 0
    with open(path) as f:
        for line in f:
            if "time=" in line and "bytes from" in line:
                field = line.split("time=", 1)[1].split()[0]
                rtts.append(float(field))
            elif "packets transmitted" in line:
                sent = int(line.split()[0])
    if not rtts:
        raise SystemExit("ping: no replies in " + path)
    print("%.4f %.4f %d %d" % (percentile(rtts, 50), percentile(rtts, 99), len(rtts), sent))


def proc_ticks(pid):
    with open("/proc/%s/stat" % pid) as f:
        text = f.read()
    # Fields after the command name, which is in parentheses and may hold spaces;
    # utime and stime are fields 14 and 15 of the whole line.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def cmd_cpu(pids):
    print(sum(proc_ticks(p) for p in pids))


def cmd_mem(pid, field):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                print(line.split()[1])
                return
    raise SystemExit("no %s in /proc/%s/status" % (field, pid))


def read_samples(path):
    """samples[path][metric] = {rep: value}"""
    samples = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rep, where, metric, value = line.split("\t")
            samples.setdefault(where, {}).setdefault(metric, {})[int(rep)] = float(value)
    return samples


def summary(values):
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def fmt_summary(s, fmt, unit_suffix=""):
    if s is None:
        return "n/a"
    med = fmt.format(s["median"]) + unit_suffix
    if s["n"] == 1:
        return med
    return "%s [%s–%s]" % (med, fmt.format(s["min"]), fmt.format(s["max"]))


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                meta.setdefault(k, []).append(v)
    return {k: (v if k == "note" else v[-1]) for k, v in meta.items()}


def cmd_report(samples_path, meta_path, json_path):
    samples = read_samples(samples_path)
    meta = read_meta(meta_path)
    under = samples.get("underlay", {})
    out = {"meta": meta, "paths": {}}
    for key, label in PATHS:
        per = samples.get(key, {})
        entry = {"label": label, "measured": bool(per), "metrics": {}}
        for metric, _, unit, cmp, _ in METRICS:
            reps = per.get(metric, {})
            m = {"unit": unit, "samples": [reps[r] for r in sorted(reps)], "summary": summary(list(reps.values()))}
            if key != "underlay" and cmp and reps:
                m.update(compare(reps, under.get(metric, {}), cmp, "underlay"))
            # The relay against direct UDP of the same run (issue 14: at least half).
            if key == "relay" and cmp and reps:
                m.update(compare(reps, samples.get("udp", {}).get(metric, {}), cmp, "udp"))
            entry["metrics"][metric] = m
        out["paths"][key] = entry

    # The table: one row per metric, a column per path, then the comparisons.
    head = ["metric", "unit"] + [label for _, label in PATHS] + ["UDP vs underlay", "WS vs underlay", "relay vs UDP"]
    rows = []
    for metric, label, unit, cmp, fmt in METRICS:
        row = [label, unit]
        for key, _ in PATHS:
            row.append(fmt_summary(out["paths"][key]["metrics"][metric]["summary"], fmt))
        for key, base in (("udp", "underlay"), ("ws", "underlay"), ("relay", "udp")):
            m = out["paths"][key]["metrics"][metric]
            if cmp == "ratio":
                s = m.get("ratio_to_" + base)
                row.append(fmt_summary(scale(s, 100), "{:.1f}", "%") if s else "n/a")
            elif cmp == "delta":
                s = m.get("added_to_" + base)
                row.append(fmt_summary(s, "{:+.3f}") if s else "n/a")
            else:
                row.append("—")
        rows.append(row)
    # WebSocket single stream against UDP single stream (issue 4's target).
    ws_vs_udp = None
    u = samples.get("udp", {}).get("tcp1_gbps", {})
    w = samples.get("ws", {}).get("tcp1_gbps", {})
    paired = [r for r in sorted(w) if r in u and u[r] > 0]
    if paired:
        ws_vs_udp = summary([w[r] / u[r] for r in paired])
    out["ws_vs_udp_tcp1_ratio"] = ws_vs_udp
    # The relay against direct UDP, 1 and 4 streams (issue 14's target: at least 0.5).
    for streams in (1, 4):
        m = out["paths"]["relay"]["metrics"]["tcp%d_gbps" % streams]
        out["relay_vs_udp_tcp%d_ratio" % streams] = m.get("ratio_to_udp")

    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = []
    lines.append("  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip())
    lines.append("  ".join("-" * widths[i] for i in range(len(head))))
    for r in rows:
        lines.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    print("\n".join(lines))
    print()
    print("median [min–max] of %s runs, %s s per iperf3 run, %s pings at %s ms;"
          % (meta.get("reps", "?"), meta.get("seconds", "?"), meta.get("pings", "?"), meta.get("ping_interval_ms", "?")))
    print("'vs underlay' pairs each run with the underlay of the same run, 'relay vs UDP' with")
    print("direct UDP of the same run: throughput as a percentage, RTT as milliseconds added.")
    print("GB = 10^9 bytes received by iperf3; daemon CPU = utime+stime of both ends' stt-tun")
    print("daemons over each TCP run, relay CPU = that of the relay's daemon; relay forwarded =")
    print("bytes the relay forwarded (both ways, whole RELAY messages) per byte received.")
    if ws_vs_udp:
        print("WebSocket single stream vs UDP single stream: %s" % fmt_summary(scale(ws_vs_udp, 100), "{:.1f}", "%"))
    for streams in (1, 4):
        r = out["relay_vs_udp_tcp%d_ratio" % streams]
        if r:
            print("relay vs direct UDP, %d stream%s: %s (target: at least 50%%)"
                  % (streams, "" if streams == 1 else "s", fmt_summary(scale(r, 100), "{:.1f}", "%")))
    for note in meta.get("note", []):
        print("note: " + note)

    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2, ensure_ascii=False)
            f.write("\n")


def compare(reps, base, cmp, name):
    """reps against base, paired by run: {"ratio_to_NAME": summary} for cmp "ratio",
    {"added_to_NAME": summary} for "delta"; the summary is None when no run has both."""
    paired = [r for r in sorted(reps) if r in base]
    if cmp == "ratio":
        return {"ratio_to_" + name: summary([reps[r] / base[r] for r in paired if base[r] > 0])}
    return {"added_to_" + name: summary([reps[r] - base[r] for r in paired])}


def scale(s, k):
    if s is None:
        return None
    return {"median": s["median"] * k, "min": s["min"] * k, "max": s["max"] * k, "n": s["n"]}


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "iperf" and len(args) == 1:
        cmd_iperf(args[0])
    elif cmd == "ping" and len(args) == 1:
        cmd_ping(args[0])
    elif cmd == "cpu" and args:
        cmd_cpu(args)
    elif cmd == "mem" and len(args) == 2:
        cmd_mem(args[0], args[1])
    elif cmd == "report" and len(args) in (2, 4) and (len(args) == 2 or args[2] == "--json"):
        cmd_report(args[0], args[1], args[3] if len(args) == 4 else None)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
