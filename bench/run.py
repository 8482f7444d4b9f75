"""`make bench`: nginx vs stockade on the same machine in the same run; prints a table and writes JSON.

    .venv/bin/python bench/run.py [--connections 50,200] [--runs 3] [--profiles stockade-bare] [--quick]

See DEVELOPERS.md ("Benchmarks") for what each profile measures and how to read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (`python bench/run.py`): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, procfs, report, servers
from bench.profiles import Profile, select

RESULTS = servers.ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10; --quick: 1)")
    p.add_argument("--warmup", type=int, help="seconds of unmeasured load before every run (default 3; --quick: 1)")
    p.add_argument("--runs", type=int, help="measured runs per profile; medians are reported (default 3; --quick: 1)")
    p.add_argument(
        "--connections", default="50", help="keep-alive connections, a comma-separated list (default 50; e.g. 50,200)"
    )
    p.add_argument("--profiles", help="comma-separated subset (nginx is always added: ratios need it)")
    p.add_argument("--json", type=Path, help="where to write the results (default bench/results/<UTC time>.json)")
    p.add_argument("--quick", action="store_true", help="short runs for a smoke test; the numbers mean little")
    p.add_argument("--builtin", action="store_true", help="use the built-in upstream and load generator")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxy and the load side to separate CPUs")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.runs = args.runs or (1 if args.quick else 3)
    args.connections = [int(c) for c in args.connections.split(",")]
    if min(args.duration, args.runs, *args.connections) < 1 or args.warmup < 0:
        p.error("--duration, --runs and --connections must be at least 1, --warmup at least 0")
    return args


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """The proxy under test gets the first CPU to itself; the load generator and the upstream share the rest.
    Every proxy (nginx or stockade) so gets exactly one core, and the load side the same capacity every time."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def start(profile: Profile, tmp: Path, proxy_cpus: set[int] | None, upstream: servers.Server) -> servers.Server | None:
    """Start the profile's proxy (None for `direct`: the load goes straight to the upstream). Not yet probed."""
    workdir = tmp / profile.name
    if profile.kind == "direct":
        return None
    if profile.kind == "nginx":
        server = servers.start_nginx(profile.name, workdir, proxy_cpus, upstream=upstream.port)
        server.headers = dict(profile.headers)
        return server
    if profile.kind == "floor":
        return servers.start_floor(profile.name, workdir, proxy_cpus, upstream.port)
    return servers.start_stockade(profile, workdir, proxy_cpus, upstream.port)


def measure(
    args: argparse.Namespace,
    run_load: load.Runner,
    profile: Profile,
    target: servers.Server,
    proxy: servers.Server | None,
    upstream: servers.Server,
    conns: int,
    load_cpus: set[int] | None,
) -> dict[str, Any]:
    """Warm up, then one measured run; CPU of the proxy's and the upstream's process trees is read around it."""
    headers = proxy.headers if proxy else profile.headers
    log = proxy.decision_log if proxy is not None else None
    if args.warmup:
        run_load(target.port, headers, conns, args.warmup, load_cpus, {})
    if log is not None and log.exists():
        os.truncate(log, 0)  # the log is opened O_APPEND: the proxy carries on writing at the new end
    groups = {"upstream": upstream.pids} | ({"proxy": proxy.pids} if proxy else {})
    raw = run_load(target.port, headers, conns, args.duration, load_cpus, groups)
    if proxy is not None:
        raw["proxy_rss_bytes"] = procfs.rss_bytes(proxy.pids)
        if log is not None and log.exists():
            raw["decision_log_bytes"] = log.stat().st_size  # lines still buffered in the proxy are not counted
            os.truncate(log, 0)
    return report.derive(raw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        profiles = select(args.profiles)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    machine = report.machine_info()  # before pinning ourselves, so it shows every usable CPU
    proxy_cpus, load_cpus = cpu_plan(args.no_pin)
    if load_cpus is not None:
        os.sched_setaffinity(0, load_cpus)  # our own bookkeeping stays off the proxy's core
    have_nginx = shutil.which("nginx") is not None
    tools = {
        "upstream": "nginx" if have_nginx and not args.builtin else "builtin",
        "load": "wrk" if shutil.which("wrk") and not args.builtin else "builtin",
    }
    skipped = {p.name: "nginx is not installed" for p in profiles if p.kind == "nginx" and not have_nginx}
    profiles = [p for p in profiles if p.name not in skipped]
    doc: dict[str, Any] = {
        "schema": 1,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "runs": args.runs,
            "connections": args.connections,
            "path": servers.PATH,
            "tools": tools,
            "pinning": {"proxy": sorted(proxy_cpus or ()), "load": sorted(load_cpus or ())},
        },
        "loadavg": {"start": procfs.loadavg()},
        "skipped": skipped,
        "profiles": {},
        "runs": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    started: list[servers.Server] = []
    print(
        f"bench: upstream {tools['upstream']}, load {tools['load']}, pinning {doc['settings']['pinning']}, "
        f"work dir {tmp}",
        file=sys.stderr,
    )
    try:
        if tools["upstream"] == "nginx":
            upstream = servers.start_nginx("upstream", tmp / "upstream", load_cpus)
        else:
            upstream = servers.start_builtin_upstream(tmp / "upstream", load_cpus)
        started.append(upstream)
        servers.probe(upstream)
        proxies: dict[str, servers.Server | None] = {}
        for profile in profiles:
            proxies[profile.name] = server = start(profile, tmp, proxy_cpus, upstream)
            if server is not None:
                started.append(server)  # before probing, so a proxy that fails its probe is stopped too
                servers.probe(server, profile.expect_headers)
            doc["profiles"][profile.name] = describe(profile, server)
        run_load = load.run_wrk if tools["load"] == "wrk" else load.run_builtin
        total = len(args.connections) * args.runs * len(profiles)
        for conns in args.connections:
            for rnd in range(args.runs):
                order = profiles[rnd % len(profiles) :] + profiles[: rnd % len(profiles)]  # no fixed position
                for profile in order:
                    proxy = proxies[profile.name]
                    run = measure(args, run_load, profile, proxy or upstream, proxy, upstream, conns, load_cpus)
                    run.update(profile=profile.name, connections=conns, round=rnd)
                    doc["runs"].append(run)
                    progress(len(doc["runs"]), total, run)
    except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:  # BenchError is a RuntimeError
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        for server in reversed(started):
            servers.stop(server)
        if args.keep:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    doc["loadavg"]["end"] = procfs.loadavg()
    doc["summary"] = report.summarise(doc["runs"], [p.name for p in profiles], args.connections)
    doc["goal"] = report.goal(doc["summary"])
    doc["budgets"] = report.budgets(doc["runs"])
    print(report.table(doc["summary"]))
    for line in report.notes(doc["summary"], doc["loadavg"], doc["budgets"]):
        print(line)
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    print(f"stockade data plane: {machine['stockade_data_plane']}")
    path = args.json or RESULTS / f"{doc['started_utc'].replace(':', '').replace('-', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"bench: wrote {path}", file=sys.stderr)
    invalid = [f"{r['profile']} c={r['connections']} round {r['round']}" for r in doc["runs"] if not r["valid"]]
    if invalid:
        print(f"bench: runs with errors (excluded from the medians): {', '.join(invalid)}", file=sys.stderr)
        return 1
    return 0


def describe(profile: Profile, server: servers.Server | None) -> dict[str, Any]:
    """What was started, for the JSON: header names only (their values may be credentials)."""
    out: dict[str, Any] = {"kind": profile.kind, "measures": profile.measures, "headers": sorted(profile.headers)}
    if server is not None:
        out["pids"] = server.pids
        out["affinity"] = procfs.affinity(server.pids)
        out["headers"] = sorted(server.headers)
        for name in ("stockade.yaml", "nginx.conf"):
            with contextlib.suppress(FileNotFoundError):
                out["config"] = (server.workdir / name).read_text()
    return out


def progress(done: int, total: int, run: dict[str, Any]) -> None:
    cpu = run["proxy_cpu_us_per_req"]
    print(
        f"[{done}/{total}] {run['profile']} c={run['connections']} round {run['round'] + 1}: {run['rps']:.0f} req/s, "
        f"p99 {run['p99_us'] / 1000:.2f} ms, proxy {f'{cpu:.1f} µs/req' if cpu else '-'}"
        f"{'' if run['valid'] else ', ERRORS ' + json.dumps(run['errors'])}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
