#!/usr/bin/env python3
"""Turn one scripts/bench.sh run into docs/performance.md.

Every latchkey figure is stated as a ratio to a limit measured in the same run:
the static axum reply (rate and server CPU per request), `openssl speed` sign and
verify rates, and argon2 with latchkey's parameters. Composed limits follow the
performance issue: a request's CPU floor is the static reply's CPU plus the
cryptography it cannot avoid (client_credentials = static + one sign; a refresh
with `openid` = static + two signs, access and ID token; userinfo = static + one
verify), and its rate limit is one core divided by that floor.
"""

import argparse
import datetime
import glob
import json
import os
import re
import statistics


def load(path):
    with open(path) as f:
        return json.load(f)


def parse_speed(path):
    text = open(path).read()
    out = {}
    for line in text.splitlines():
        nums = re.findall(r"[\d.]+", line)
        if line.startswith("rsa 2048"):
            out["rsa_sign_per_s"], out["rsa_verify_per_s"] = float(nums[-2]), float(nums[-1])
        elif "nistp256" in line:
            out["p256_sign_per_s"], out["p256_verify_per_s"] = float(nums[-2]), float(nums[-1])
    return out


def fmt_rate(x):
    return f"{x:,.0f}/s" if x is not None else "—"


def fmt_us(x):
    if x is None:
        return "—"
    if x >= 10_000:
        return f"{x / 1000:.0f} ms"
    if x >= 1000:
        return f"{x / 1000:.1f} ms"
    return f"{x:.0f} µs" if x >= 100 else f"{x:.1f} µs"


def fmt_mb(kib):
    return f"{kib / 1024:.0f} MB" if kib else "—"


def pct(a, b):
    return f"{100 * a / b:.0f} %" if a is not None and b else "—"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--quick", default="0")
    ap.add_argument("--duration", default="?")
    ap.add_argument("--runs", default="1")
    ap.add_argument("--concurrency", default="32")
    ap.add_argument("--backends", default="sqlite postgres")
    ap.add_argument("--load-start", default="?")
    ap.add_argument("--pg-options", default="")
    # When the run was measured, for a report written again from kept results.
    ap.add_argument("--at", default=None)
    ap.add_argument("--load-end", default="?")
    ap.add_argument("--readme")
    a = ap.parse_args()
    run = a.run

    speed = parse_speed(os.path.join(run, "openssl-speed.txt"))
    prims = load(os.path.join(run, "primitives.json"))
    # static-N.json, one per measurement across the run (not the per-run
    # static-N.K.json files that each was chosen from).
    statics = [load(p) for p in sorted(glob.glob(os.path.join(run, "static-*.json")))
               if re.fullmatch(r"static-\d+\.json", os.path.basename(p))]
    static_rps = [s["classes"]["static"]["rps"] for s in statics]
    static_cpu = [s["server"]["cpu_us_per_req"] for s in statics]
    s_rps = statistics.median(static_rps)
    s_cpu = statistics.median(static_cpu)
    spread_rps = (max(static_rps) - min(static_rps)) / s_rps
    spread_cpu = (max(static_cpu) - min(static_cpu)) / s_cpu

    # The composed limit of client_credentials as measured (static_reply's
    # POST /token: the HTTP exchange and one signature by latchkey's signer).
    baselines = {}
    for alg in ("es256", "rs256"):
        p = os.path.join(run, f"baseline-cc-{alg}.json")
        if os.path.exists(p):
            baselines[f"cc-{alg}"] = load(p)

    rsa_sign = 1e6 / speed["rsa_sign_per_s"]
    p256_sign = 1e6 / speed["p256_sign_per_s"]
    rsa_verify = 1e6 / speed["rsa_verify_per_s"]
    argon_raw_us = prims["argon2id"]["raw_us"]
    # The raw argon2 rate measured on the server core just before and just
    # after each backend's password scenario (bench.sh argon2_limit): argon2
    # is bound by memory bandwidth, which moves with the machine's other
    # tenants, so the password scenario is held to the mean of those two.
    argon_beside = {}
    for b in a.backends.split():
        pair = [os.path.join(run, f"{b}-argon2-{when}.json") for when in ("before", "after")]
        if all(os.path.exists(p) for p in pair):
            argon_beside[b] = [load(p)["argon2id"]["raw_us"] for p in pair]

    def argon_limit_us(b):
        return statistics.mean(argon_beside[b]) if b in argon_beside else argon_raw_us

    # Scenarios whose server may use both cores (bench.sh widens its
    # affinity): the refresh target is stated for 2 cores. Their rate limit is
    # two cores divided by the CPU floor (the driver shares one of them).
    SERVER_CORES = {"refresh-es256": 2, "refresh-rs256": 2}

    # name -> (limit CPU µs per request, how it is composed)
    limits = {
        "jwks": (s_cpu, "static reply"),
        "jwks-etag": (s_cpu, "static reply"),
        "cc-es256": (s_cpu + p256_sign, "static + 1 P-256 sign"),
        "cc-rs256": (s_cpu + rsa_sign, "static + 1 RSA-2048 sign"),
        "refresh-es256": (s_cpu + 2 * p256_sign, "static + 2 P-256 signs"),
        "refresh-rs256": (s_cpu + 2 * rsa_sign, "static + 2 RSA-2048 signs"),
        "userinfo": (s_cpu + rsa_verify, "static + 1 RSA-2048 verify"),
        "password": (argon_raw_us, "raw argon2id, same parameters"),
    }
    titles = {
        "jwks": "JWKS GET",
        "jwks-etag": "JWKS If-None-Match (304)",
        "cc-es256": "client_credentials ES256",
        "cc-rs256": "client_credentials RS256",
        "refresh-es256": "refresh chain ES256 (openid)",
        "refresh-rs256": "refresh chain RS256 (openid)",
        "userinfo": "userinfo (RS256 token)",
        "password": "password (argon2id)",
    }
    main_class = {
        "jwks": "jwks",
        "jwks-etag": "jwks-304",
        "cc-es256": "client_credentials",
        "cc-rs256": "client_credentials",
        "refresh-es256": "refresh",
        "refresh-rs256": "refresh",
        "userinfo": "userinfo",
        "password": "password",
    }

    backends = a.backends.split()
    results = {}
    for b in backends:
        for key in list(limits) + ["mixed", "mixed-calm"]:
            p = os.path.join(run, f"{b}-{key}.json")
            if os.path.exists(p):
                results[(b, key)] = load(p)

    def target_check(b, key, r, rps):
        c = r["classes"][main_class[key]]
        if key == "jwks":
            return "≥ 90 % of static", rps / s_rps >= 0.9
        if key == "jwks-etag":
            j = results.get((b, "jwks"))
            base = j["classes"]["jwks"]["rps"] if j else None
            return "≥ JWKS 200", base is not None and rps >= base
        if key == "cc-es256":
            return "≥ 60 % of limit", rps * limits[key][0] / 1e6 >= 0.6
        if key == "cc-rs256":
            return "≥ 90 % of limit", rps * limits[key][0] / 1e6 >= 0.9
        if key == "refresh-es256":
            want = 5000 if b == "sqlite" else 3000
            return f"≥ {want:,}/s, p99 < 10 ms", rps >= want and c["p99_us"] < 10_000
        if key == "userinfo":
            return "≥ 10,000/s", rps >= 10_000
        if key == "password":
            return "≥ 90 % of argon2", rps * argon_limit_us(b) / 1e6 >= 0.9
        return "—", None

    def verdict(ok):
        return "—" if ok is None else ("met" if ok else "**missed**")

    lines = []
    w = lines.append
    mode = "quick" if a.quick == "1" else "full"
    runs_text = (f"each scenario the median-rate run of {a.runs} runs of {a.duration} s"
                 if a.runs != "1" else f"{a.duration} s measured per scenario")
    now = a.at or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    main_table = []
    mt = main_table.append
    mt("| scenario | backend | req/s | limit req/s | % of limit | server CPU / req | limit CPU / req | CPU × limit | p99 | target | met? |")
    mt("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in limits:
        for b in backends:
            r = results.get((b, key))
            if not r:
                continue
            c = r["classes"][main_class[key]]
            rps = c["rps"]
            lim_cpu = argon_limit_us(b) if key == "password" else limits[key][0]
            # The JWKS is held to the static reply's measured rate (both are
            # bounded the same way when the driver is the bottleneck); the
            # others to one core divided by their CPU floor.
            lim_rps = s_rps if key.startswith("jwks") else SERVER_CORES.get(key, 1) * 1e6 / lim_cpu
            cpu = r["server"]["cpu_us_per_req"]
            tgt, ok = target_check(b, key, r, rps)
            mt(f"| {titles[key]} | {b} | {fmt_rate(rps)} | {fmt_rate(lim_rps)} | {pct(rps, lim_rps)} "
               f"| {fmt_us(cpu)} | {fmt_us(lim_cpu)} | {cpu / lim_cpu:.2f}× | {fmt_us(c['p99_us'])} "
               f"| {tgt} | {verdict(ok)} |")
    def flood(b):
        """The refresh class under the flood, the calm run's, and the p99 ratio
        (None when either run is missing or the calm run has no p99)."""
        m, calm = results.get((b, "mixed")), results.get((b, "mixed-calm"))
        if not m or not calm or not calm["classes"].get("refresh", {}).get("p99_us"):
            return None
        mr, cr = m["classes"].get("refresh", {}), calm["classes"]["refresh"]
        return m, mr, cr, mr.get("p99_us", 0) / cr["p99_us"]

    for b in backends:
        f = flood(b)
        if not f:
            continue
        _, mr, cr, ratio = f
        mt(f"| refresh ES256 under a password flood (mixed) | {b} | {fmt_rate(mr.get('rps'))} | — | — "
           f"| — | — | — | {fmt_us(mr.get('p99_us'))} "
           f"| ≤ 2× without the flood ({fmt_us(cr['p99_us'])}) | {verdict(ratio <= 2)} |")

    w("# latchkey performance")
    w("")
    w(f"Measured by `scripts/bench.sh{' --quick' if mode == 'quick' else ''}` on {now}, commit "
      f"`{a.commit}`, {mode} mode ({runs_text}, c={a.concurrency}, "
      "closed loop, keep-alive). The server starts on both cores (so it sizes its runtime and "
      "hashing threads for this machine) and is then pinned to core 1 (`taskset -a -p -c 1`), the load "
      "driver (`examples/load.rs`) on core 0; for the refresh chains and the mixed load (whose "
      "target is stated for 2 cores) the server may use both cores, beside the driver, and their "
      "limit rate is two cores over the CPU floor. Every limit below was measured in the same run "
      "on core 1, so the ratios hold even though the absolute numbers move with the machine.")
    w("")
    if "postgres" in backends:
        how = (f"with `?{a.pg_options}`" if a.pg_options
               else "with the driver's default `sslmode=prefer` (TLS if the server offers it)")
        w(f"PostgreSQL runs on the same machine, reached over loopback {how}: a connection that "
          "never leaves the host gains nothing from TLS (`BENCH_PG_OPTIONS` sets the query).")
        w("")
    w(f"**Noise.** Load average {a.load_start} at the start and {a.load_end} at the end "
      "(this 2-core machine is shared with other builds, so both cores also ran other "
      "processes during the run). The static reply, measured "
      f"{len(statics)} times across the run, spread by {100 * spread_rps:.0f} % in rate "
      f"({', '.join(fmt_rate(x) for x in static_rps)}) and {100 * spread_cpu:.0f} % in "
      f"server CPU per request ({', '.join(fmt_us(x) for x in static_cpu)}). Treat differences "
      "smaller than that spread as noise; CPU per request is steadier than req/s because it "
      "does not depend on how fast the driver could send.")
    w("")
    w("## Limits measured in this run")
    w("")
    w("| limit | value |")
    w("|---|---|")
    w(f"| static axum reply (`examples/static_reply.rs`), median of {len(statics)} | "
      f"{fmt_rate(s_rps)}, {fmt_us(s_cpu)} server CPU per request |")
    w(f"| RSA-2048 sign / verify (`openssl speed`) | {fmt_rate(speed['rsa_sign_per_s'])} "
      f"({fmt_us(rsa_sign)}) / {fmt_rate(speed['rsa_verify_per_s'])} ({fmt_us(rsa_verify)}) |")
    w(f"| P-256 sign / verify (`openssl speed`) | {fmt_rate(speed['p256_sign_per_s'])} "
      f"({fmt_us(p256_sign)}) / {fmt_rate(speed['p256_verify_per_s'])} "
      f"({fmt_us(1e6 / speed['p256_verify_per_s'])}) |")
    w(f"| argon2id with latchkey's parameters (`argon2` crate, benches/primitives.rs) | "
      f"{fmt_us(argon_raw_us)} per hash, {fmt_rate(1e6 / argon_raw_us)} per core |")
    for b, (before, after) in argon_beside.items():
        w(f"| argon2id beside the {b} password scenario, before / after (its limit: the mean) | "
          f"{fmt_us(before)} / {fmt_us(after)} per hash, "
          f"{fmt_rate(1e6 / argon_limit_us(b))} per core |")
    w("")
    w("Composed limits (one core): client_credentials = 1 / (static reply CPU + one sign); a "
      "refresh with `openid` = 1 / (static + two signs: access and ID token); userinfo = 1 / "
      "(static + one RSA verify); password = the raw argon2 rate measured beside it. They are CPU floors: they "
      "leave out the database entirely, so a figure that depends on a durable commit can stay "
      "well below them while the server core idles (see *core busy* below).")
    w("")
    w("## latchkey against its limits")
    w("")
    lines.extend(main_table)
    w("")
    w("*% of limit* compares rates; *CPU × limit* compares the server CPU each request cost "
      "with its floor (1.00× would be the floor itself).")
    w("")
    if baselines:
        w("## client_credentials against its measured composed limit")
        w("")
        w("The limits above add two figures measured apart. `examples/static_reply.rs` also "
          "serves the sum itself: its `POST /token` reads the form body, signs one access token "
          "of latchkey's claim shape with latchkey's own signer and answers it as JSON: no client "
          "authentication, no scope policy, no logging, nothing else. The load driver runs its "
          "`client-credentials` scenario against it unchanged and verifies what it signs. Where "
          "the baseline itself stays below the summed limit, the difference is what serving a "
          "signature costs beyond the two parts (on this loopback set-up, mostly waking the "
          "driver's sleeping thread on the other core for each answer).")
        w("")
        w("| scenario | baseline req/s | baseline CPU / req | baseline % of summed limit | backend | latchkey req/s | % of measured limit | target | met on the measured limit? |")
        w("|---|---|---|---|---|---|---|---|---|")
        for key, bl in baselines.items():
            brps = bl["classes"]["client_credentials"]["rps"]
            bcpu = bl["server"]["cpu_us_per_req"]
            summed = 1e6 / limits[key][0]
            want = 0.6 if key == "cc-es256" else 0.9
            for b in backends:
                r = results.get((b, key))
                if not r:
                    continue
                rps = r["classes"]["client_credentials"]["rps"]
                w(f"| {titles[key]} | {fmt_rate(brps)} | {fmt_us(bcpu)} | {pct(brps, summed)} | {b} "
                  f"| {fmt_rate(rps)} | {pct(rps, brps)} | ≥ {int(want * 100)} % "
                  f"| {'met' if rps >= want * brps else '**missed**'} |")
        w("")
    w("## Latency, errors, tokens")
    w("")
    w("| run | class | req/s | p50 | p90 | p99 | p99.9 | errors | core busy | driver busy | tokens verified / bad |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    order = ([s["label"] for s in statics] + [f"baseline-{k}" for k in baselines]
             + [f"{b}-{k}" for b in backends for k in list(limits) + ["mixed", "mixed-calm"]])
    every = {s["label"]: s for s in statics}
    every.update({f"baseline-{k}": r for k, r in baselines.items()})
    every.update({f"{b}-{k}": r for (b, k), r in results.items()})
    for label in order:
        r = every.get(label)
        if not r:
            continue
        for name, c in r["classes"].items():
            errs = ", ".join(f"{k}: {v}" for k, v in c["errors"].items()) or "none"
            s = r["server"]
            w(f"| {label} | {name} | {fmt_rate(c['rps'])} | {fmt_us(c['p50_us'])} | {fmt_us(c['p90_us'])} "
              f"| {fmt_us(c['p99_us'])} | {fmt_us(c['p999_us'])} | {errs} "
              f"| {s['cpu_utilisation'] or 0:.2f} | {r['driver_cpu_utilisation'] or 0:.2f} "
              f"| {r['tokens']['verified']} / {r['tokens']['bad']} |")
    w("")
    w("*core busy*: the server's CPU time over the measured window (1.00 = one core saturated; the refresh and mixed runs may reach 2.00); "
      "*driver busy*: the same for the load driver. A run where the driver is near 1.00 and the "
      "server below it measured the driver, not latchkey: its CPU-per-request ratio still holds.")
    w("")
    w("## The refresh latency target and throughput (Little's law)")
    w("")
    w("In a closed loop every virtual user has one request in flight, so the mean latency is "
      "the concurrency divided by the rate. A p99 under 10 ms therefore needs at least "
      "c / 10 ms requests per second, and in practice that rate times the run's own p99 ÷ mean "
      "(how far the tail sits above the mean).")
    w("")
    w("| backend | c | refresh req/s | mean = c ÷ rate | p99 | p99 ÷ mean | rate a 10 ms p99 needs at that spread | server core busy |")
    w("|---|---|---|---|---|---|---|---|")
    for b in backends:
        r = results.get((b, "refresh-es256"))
        if not r:
            continue
        c = r["classes"]["refresh"]
        conc = r.get("concurrency") or 0
        if not c.get("rps") or not conc:
            continue
        mean_us = conc / c["rps"] * 1e6
        spread = c["p99_us"] / mean_us
        need = conc * spread / 0.010
        busy = r["server"].get("cpu_utilisation")
        w(f"| {b} | {conc} | {fmt_rate(c['rps'])} | {fmt_us(mean_us)} | {fmt_us(c['p99_us'])} "
          f"| {spread:.2f} | {fmt_rate(need)} | {busy or 0:.2f} |")
    w("")
    w("A server that is not busy while the rate stays short of what the tail needs is waiting for "
      "its database: on this machine PostgreSQL's own processes share the two cores with "
      "latchkey and the driver.")
    w("")
    w("## Password flood beside refresh chains (mixed)")
    w("")
    w("The target compares the refresh p99 under the password flood with the same load (refresh "
      "chains and JWKS readers) without the flood (*calm*). The refresh chain measured alone is "
      "shown beside it: the JWKS readers take their own share of the two cores.")
    w("")
    w("| backend | refresh req/s | refresh p99 | calm: refresh req/s | calm: refresh p99 | ratio (target ≤ 2×) "
      "| refresh p99 alone | ratio to alone | password req/s | JWKS req/s |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for b in backends:
        f = flood(b)
        alone = results.get((b, "refresh-es256"))
        if not f or not alone:
            continue
        m, mr, cr, ratio = f
        ar = alone["classes"]["refresh"]
        to_alone = mr.get("p99_us", 0) / ar["p99_us"] if ar["p99_us"] else 0
        w(f"| {b} | {fmt_rate(mr.get('rps'))} | {fmt_us(mr.get('p99_us'))} "
          f"| {fmt_rate(cr.get('rps'))} | {fmt_us(cr.get('p99_us'))} "
          f"| {ratio:.1f}× {verdict(ratio <= 2)} "
          f"| {fmt_us(ar['p99_us'])} | {to_alone:.1f}× "
          f"| {fmt_rate(m['classes'].get('password', {}).get('rps'))} "
          f"| {fmt_rate(m['classes'].get('jwks', {}).get('rps'))} |")
    w("")
    w("## Memory (server RSS)")
    w("")
    w("| backend | idle after start | max during the mixed load | after all scenarios | target |")
    w("|---|---|---|---|---|")
    for b in backends:
        try:
            idle = int(open(os.path.join(run, f"{b}-rss-idle")).read().strip())
            end = int(open(os.path.join(run, f"{b}-rss-end")).read().strip())
        except (OSError, ValueError):
            continue
        m = results.get((b, "mixed"))
        peak = m["server"]["rss_max_kib"] if m else None
        ok = idle < 30 * 1024 and (peak or 0) < 150 * 1024 and end < 150 * 1024
        w(f"| {b} | {fmt_mb(idle)} | {fmt_mb(peak)} | {fmt_mb(end)} | idle < 30 MB, < 150 MB: "
          f"{'met' if ok else '**missed**'} |")
    w("")
    w("## Primitives: latchkey's wrapper ÷ the raw call (benches/primitives.rs, same run)")
    w("")
    w("| primitive | latchkey | raw | ratio |")
    w("|---|---|---|---|")
    for name, p in prims.items():
        w(f"| {name} | {fmt_us(p['latchkey_us'])} | {fmt_us(p['raw_us'])} | {p['ratio']:.2f}× |")
    w("")
    w("Sign and verify: a whole access token (claims, JSON, base64url, the key ring's signer) "
      "against one OpenSSL signature or verification of an input of the same size. argon2id: "
      "`Secrets::verify_password` (bounded queue, hashing thread, pepper) against the `argon2` "
      "crate called directly with the parameters read from a hash latchkey made.")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("scripts/bench.sh            # release build, then about 12 minutes (median of 3 runs per scenario)")
    w("scripts/bench.sh --quick    # a few seconds per scenario")
    w("```")
    w("")
    w("It needs PostgreSQL at 127.0.0.1:5432 (`BENCH_PG_URL` to change; a fresh database is "
      "created and dropped), python3, openssl and taskset. One scenario by hand, against any "
      "running latchkey: `cargo run --release --example load -- --help`.")
    w("")
    with open(a.out, "w") as f:
        f.write("\n".join(lines))

    if a.readme:
        text = open(a.readme).read()
        begin, end = "<!-- performance:begin -->", "<!-- performance:end -->"
        if begin in text and end in text:
            block = "\n".join([begin, "", f"Latest run ({now}, {mode} mode, commit `{a.commit}`; "
                               f"static-reply spread {100 * spread_cpu:.0f} % in CPU per request):", ""]
                              + main_table + ["", end])
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            with open(a.readme, "w") as f:
                f.write(head + block + tail)


if __name__ == "__main__":
    main()
