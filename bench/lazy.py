#!/usr/bin/env python3
"""End-to-end start-up benchmark of regfs, in the spirit of HelloBench.

For each image and workload, cold every time (fresh cache dir, page cache dropped, containerd
content removed), through the testbed's WAN emulator (shaper.py) at --rate Mbit/s and --rtt ms:

  classic    containerd: `ctr images pull` + `ctr run --rm` of IMAGE:latest (gzip layers)
  lazy       `regfs run --rm` of IMAGE:regfs      (regfs convert-image, no prioritized files)
  optimized  `regfs run --rm` of IMAGE:regfs-opt  (regfs optimize with the same workload)
  reference  the reference stargz snapshotter (../shared/peers): `ctr-remote rpull` + `ctr run`
             of IMAGE:esgz-opt (`ctr-remote image optimize`, made by ../shared/testbed/estargz.sh)
  snapshotter  `regfs snapshotter` as containerd's proxy plugin `regfs`: `ctr-remote image rpull
             --snapshotter regfs` + `ctr run --snapshotter regfs` of IMAGE:regfs-opt, a fresh
             snapshotter (empty root and cache, prefetch on) and containerd every run, like
             `reference`
  optimized-on-ref-image   regfs on IMAGE:esgz-opt   } both tools on the same optimized image,
  reference-on-regfs-image the reference on IMAGE:regfs-opt } each way round
  snapshotter-on-ref-image `regfs snapshotter` on IMAGE:esgz-opt
  snapshotter-warm         `snapshotter` with the image pulled and run once before the clock
                           starts: times only a second `ctr run`, the part of `snapshotter` that
                           is containerd's, runc's and the workload's own

Reports per mode the median of --runs total times to the workload's result (split into mount
and workload; for the containerd modes `reference` and `snapshotter*`: the rpull, then the `ctr
run`), bytes and requests regfs fetched (for the snapshotter modes: what its lazy layer mounts
fetched, from its metrics endpoint; the manifest, config and TOC tails are not in them), as a
Markdown table (stdout and --out) and an SVG bar chart (--svg).

Needs (see BENCHMARKS.md): the testbed up (registry 127.0.0.1:5000 with the images, containerd),
target/release/regfs, target/peers/bin (../shared/peers/build.sh run in a copy) for `reference`,
containerd and ctr-remote on PATH for `snapshotter*`. REGFS_BENCH_LOGS=DIR keeps each
snapshotter run's snapshotter and containerd logs there. Loopback only.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("REGFS_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TESTBED = os.path.join(SHARED, "testbed")
REGFS = os.environ.get("REGFS_BIN", os.path.join(ROOT, "target/release/regfs"))
PEERS = os.environ.get("REGFS_PEERS", os.path.join(ROOT, "target/peers"))
REGISTRY = "127.0.0.1:5000"
CTRD_SOCK = "/tmp/testbed/containerd/containerd.sock"

WORKLOADS = {
    "python": (["python3", "-c", "print(42)"], "42"),
    "busybox": (["sh", "-c", "echo hello"], "hello"),
    # big: python's layers + gcc + 600 MiB of random data; the workload reads a small part.
    "big": (["python3", "-c", "print(42)"], "42"),
}


def sh(cmd, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r


def drop_caches():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Shaper:
    """A private shaper.py instance in front of the registry."""

    def __init__(self, port, rate, rtt):
        self.port = port
        self.log = open(f"/tmp/regfs-bench-shaper-{port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(TESTBED, "shaper.py"), "--listen", f"127.0.0.1:{port}",
             "--upstream", REGISTRY, "--rate-mbit", str(rate), "--rtt-ms", str(rtt)],
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/v2/"]).returncode == 0:
                return
            time.sleep(0.1)
        sys.exit("shaper did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def ms(t0):
    return (time.monotonic() - t0) * 1000.0


def manifest_size(image, tag):
    r = sh(["curl", "-fsS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
            f"http://{REGISTRY}/v2/{image}/manifests/{tag}"], check=False)
    if r.returncode != 0:
        return None
    return sum(l["size"] for l in json.loads(r.stdout)["layers"])


def prepare(image, cmd, force):
    """IMAGE:regfs and IMAGE:regfs-opt from IMAGE:latest (direct, unshaped)."""
    src = f"{REGISTRY}/{image}:latest"
    if force or manifest_size(image, "regfs") is None:
        t0 = time.monotonic()
        sh([REGFS, "convert-image", src, f"{REGISTRY}/{image}:regfs"])
        print(f"  prepared {image}:regfs in {ms(t0):.0f} ms", file=sys.stderr)
    if force or manifest_size(image, "regfs-opt") is None:
        t0 = time.monotonic()
        cache = tempfile.mkdtemp(prefix="regfs-bench-opt-")
        sh([REGFS, "optimize", "--cache-dir", cache, src, f"{REGISTRY}/{image}:regfs-opt", "--", *cmd])
        shutil.rmtree(cache, ignore_errors=True)
        print(f"  prepared {image}:regfs-opt in {ms(t0):.0f} ms", file=sys.stderr)


def run_classic(host, image, cmd, want):
    ctr = ["ctr", "--address", CTRD_SOCK, "--namespace", "regfs-bench"]
    for i in sh(ctr + ["images", "ls", "-q"], check=False).stdout.split():
        sh(ctr + ["images", "rm", "--sync", i], check=False)
    drop_caches()
    ref = f"{host}/{image}:latest"
    t0 = time.monotonic()
    sh(ctr + ["images", "pull", "--plain-http", ref])
    out = sh(ctr + ["run", "--rm", ref, f"regfs-bench-{os.getpid()}", *cmd]).stdout.strip()
    total = ms(t0)
    if out != want:
        sys.exit(f"classic: unexpected output {out!r}")
    return {"total": total, "bytes": manifest_size(image, "latest"), "requests": None}


def run_regfs(host, image, tag, cmd, want):
    cache = tempfile.mkdtemp(prefix="regfs-bench-cache-")
    stats = os.path.join(cache, "stats.json")
    drop_caches()
    t0 = time.monotonic()
    r = sh([REGFS, "run", "--rm", "--cache-dir", cache, "--stats-file", stats, f"{host}/{image}:{tag}", *cmd])
    total = ms(t0)
    if r.stdout.strip() != want:
        sys.exit(f"regfs {tag}: unexpected output {r.stdout!r}")
    s = json.load(open(stats))
    shutil.rmtree(cache, ignore_errors=True)
    return {"total": total, "bytes": s["registryBytes"], "requests": s["registryRequests"],
            "open": s["openMs"], "workload": s["workloadMs"]}


def run_reference(host, image, cmd, want, tag="esgz-opt"):
    sn = os.path.join(PEERS, "snapshotter.sh")
    env = dict(os.environ, PEERS_SN="/tmp/regfs-bench-sn")
    sh([sn, "stop"], check=False, env=env)
    shutil.rmtree("/tmp/regfs-bench-sn", ignore_errors=True)
    sh([sn, "start"], env=env)
    drop_caches()
    ref = f"{host}/{image}:{tag}"
    ctr = [sn, "ctr"]
    t0 = time.monotonic()
    sh(ctr + ["images", "rpull", "--plain-http", ref], env=env)
    pulled = ms(t0)
    out = sh(ctr + ["run", "--rm", "--snapshotter=stargz", ref, f"regfs-bench-ref-{os.getpid()}", *cmd],
             env=env).stdout.strip()
    total = ms(t0)
    sh([sn, "stop"], check=False, env=env)
    if out != want:
        sys.exit(f"reference: unexpected output {out!r}")
    return {"total": total, "bytes": None, "requests": None, "open": pulled, "workload": total - pulled}


class RegfsSnapshotter:
    """A fresh `regfs snapshotter` (empty root and cache) under a containerd of its own, both in a
    temp dir; `stop` ends both and unmounts whatever is left under the dir."""

    NAMESPACE = "regfs-bench"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="regfs-bench-snap-")
        d = self.dir
        self.sock = os.path.join(d, "containerd.sock")
        with socket.socket() as s:  # a free loopback port for the metrics endpoint
            s.bind(("127.0.0.1", 0))
            self.metrics = f"127.0.0.1:{s.getsockname()[1]}"
        with open(os.path.join(d, "snapshotter.toml"), "w") as f:
            f.write(f'cache_dir = "{d}/cache"\nprefetch = true\nbackground_fetch = false\n'
                    f'hosts_dir = "{d}/certs.d"\nmetrics_address = "{self.metrics}"\n')
        with open(os.path.join(d, "containerd.toml"), "w") as f:
            f.write(f"""version = 2
root = "{d}/ctrd-root"
state = "{d}/ctrd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[proxy_plugins.regfs]
  type = "snapshot"
  address = "{d}/regfs.sock"
""")
        self.procs = []
        self.procs.append(self._start(
            [REGFS, "snapshotter", "--address", f"{d}/regfs.sock", "--root", f"{d}/root",
             "--config", f"{d}/snapshotter.toml"], "snapshotter.log"))
        self._wait(lambda: os.path.exists(f"{d}/regfs.sock"), "regfs snapshotter")
        self.procs.append(self._start(["containerd", "--config", f"{d}/containerd.toml"], "containerd.log"))
        self._wait(lambda: os.path.exists(self.sock) and
                   subprocess.run(self.ctr() + ["version"], capture_output=True).returncode == 0, "containerd")

    def _start(self, cmd, log):
        out = open(os.path.join(self.dir, log), "w")
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, REGFS_LOG=os.environ.get("REGFS_LOG", "regfs=info")))

    def _wait(self, ready, what):
        for _ in range(100):
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        sys.exit(f"{what} did not start")

    def ctr(self, tool="ctr"):
        return [tool, "--address", self.sock, "--namespace", self.NAMESPACE]

    def fetched(self):
        """(bytes, requests) the lazy layer mounts fetched, summed from the metrics endpoint."""
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        total = lambda name: sum(int(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\d+)$", text, re.M))
        return total("regfs_layer_fetched_bytes"), total("regfs_layer_requests_total")

    def stop(self, keep_logs=None):
        for p in reversed(self.procs):  # containerd first, then the snapshotter
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with open("/proc/mounts") as f:
            mounts = [l.split()[1] for l in f if l.split()[1].startswith(self.dir + "/")]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", m], capture_output=True).returncode == 0 or \
                subprocess.run(["umount", "-l", m], capture_output=True)
        if keep_logs:
            os.makedirs(keep_logs, exist_ok=True)
            for log in ("snapshotter.log", "containerd.log"):
                shutil.copy(os.path.join(self.dir, log), keep_logs)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_snapshotter(host, image, cmd, want, tag="regfs-opt", warm=False):
    """With `warm`, the rpull and a first run happen before the clock starts, and only a second
    `ctr run` is timed: containerd's, runc's and the workload's own time with every byte local."""
    sn = RegfsSnapshotter()
    try:
        ref = f"{host}/{image}:{tag}"
        rpull = sn.ctr("ctr-remote") + ["images", "rpull", "--snapshotter", "regfs", "--plain-http", ref]
        run = sn.ctr() + ["run", "--rm", "--snapshotter", "regfs", ref, f"regfs-bench-snap-{os.getpid()}", *cmd]
        if warm:
            sh(rpull)
            sh(run)
        drop_caches()
        t0 = time.monotonic()
        if not warm:
            sh(rpull)
        pulled = ms(t0)
        out = sh(run).stdout.strip()
        total = ms(t0)
        fetched, requests = sn.fetched()
    finally:
        sn.stop(keep_logs=os.environ.get("REGFS_BENCH_LOGS"))
    if out != want:
        sys.exit(f"snapshotter {tag}: unexpected output {out!r}")
    return {"total": total, "bytes": fetched, "requests": requests, "open": pulled, "workload": total - pulled}


def svg_chart(rows, path):
    """Horizontal bars of the median total per (image, mode)."""
    width, bar_h, gap, left = 760, 22, 8, 190
    vmax = max(r["total"] for r in rows) or 1
    h = 40 + len(rows) * (bar_h + gap)
    colors = {"classic": "#9e9e9e", "lazy": "#64b5f6", "optimized": "#1565c0", "reference": "#ffb74d",
              "snapshotter": "#2e7d32"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14">time to the workload\'s result (median, ms; lower is better)</text>']
    for i, r in enumerate(rows):
        y = 35 + i * (bar_h + gap)
        w = (width - left - 90) * r["total"] / vmax
        parts.append(f'<text x="10" y="{y + 15}">{r["image"]} / {r["mode"]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colors.get(r["mode"], "#777")}"/>')
        parts.append(f'<text x="{left + w + 5:.1f}" y="{y + 15}">{r["total"]:.0f}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if unit == "MB":
        return f"{v / 1e6:.2f}"
    return f"{v:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="python,busybox")
    ap.add_argument("--modes", default="classic,lazy,optimized,reference")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=float, default=100.0, help="Mbit/s")
    ap.add_argument("--rtt", type=float, default=20.0, help="ms")
    ap.add_argument("--port", type=int, default=5180, help="shaper port")
    ap.add_argument("--prepare", action="store_true", help="re-create IMAGE:regfs and IMAGE:regfs-opt")
    ap.add_argument("--out", help="append the Markdown report to this file")
    ap.add_argument("--svg", help="write the chart here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (FUSE mounts, containers, drop_caches)")
    modes = a.modes.split(",")
    shaper = Shaper(a.port, a.rate, a.rtt)
    host = f"127.0.0.1:{a.port}"
    rows = []
    try:
        for image in a.images.split(","):
            cmd, want = WORKLOADS[image]
            prepare(image, cmd, a.prepare)
            results = {m: [] for m in modes}
            for run in range(a.runs):
                for mode in modes:  # interleaved, so drift on the shared machine hits every mode alike
                    if mode == "classic":
                        r = run_classic(host, image, cmd, want)
                    elif mode == "lazy":
                        r = run_regfs(host, image, "regfs", cmd, want)
                    elif mode == "optimized":
                        r = run_regfs(host, image, "regfs-opt", cmd, want)
                    elif mode == "reference":
                        r = run_reference(host, image, cmd, want)
                    elif mode == "optimized-on-ref-image":
                        r = run_regfs(host, image, "esgz-opt", cmd, want)
                    elif mode == "reference-on-regfs-image":
                        r = run_reference(host, image, cmd, want, tag="regfs-opt")
                    elif mode == "snapshotter":
                        r = run_snapshotter(host, image, cmd, want)
                    elif mode == "snapshotter-warm":
                        r = run_snapshotter(host, image, cmd, want, warm=True)
                    elif mode == "snapshotter-on-ref-image":
                        r = run_snapshotter(host, image, cmd, want, tag="esgz-opt")
                    else:
                        sys.exit(f"unknown mode {mode}")
                    results[mode].append(r)
                    print(f"  {image} {mode} run {run + 1}: {r['total']:.0f} ms", file=sys.stderr)
            for mode in modes:
                rs = results[mode]
                med = lambda k: statistics.median(x[k] for x in rs) if rs and rs[0].get(k) is not None else None
                rows.append({"image": image, "mode": mode, "total": med("total"), "bytes": med("bytes"),
                             "requests": med("requests"), "open": med("open"), "workload": med("workload"),
                             "all": [round(x["total"]) for x in rs]})
    finally:
        shaper.stop()
    lines = [f"Shaped link: {a.rate:g} Mbit/s, {a.rtt:g} ms RTT (shaper.py); median of {a.runs} cold runs; "
             f"`{' '.join(sys.argv)}`", "",
             "| image | mode | total ms | vs classic | fetched MB | requests | mount ms | workload ms | all runs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        base = next((x["total"] for x in rows if x["image"] == r["image"] and x["mode"] == "classic"), None)
        ratio = f"{base / r['total']:.1f}x faster" if base and r["mode"] != "classic" else ""
        lines.append(f"| {r['image']} | {r['mode']} | {fmt(r['total'])} | {ratio} | {fmt(r['bytes'], 'MB')} | "
                     f"{fmt(r['requests'])} | {fmt(r['open'])} | {fmt(r['workload'])} | {' '.join(map(str, r['all']))} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        with open(a.out, "a") as f:
            f.write(report + "\n")
    if a.svg:
        svg_chart(rows, a.svg)


if __name__ == "__main__":
    main()
