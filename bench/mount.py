#!/usr/bin/env python3
"""Lazy-mount benchmark of regfs (issue: lazy filesystem), through the testbed's shaper.

Measured in one run, medians of --runs cold runs each:
  * mount-ready time and requests of `regfs mount --daemon` on IMAGE:TAG (cold cache),
    then time to run `python3 -c 'print(42)'` in a chroot of the mount, bytes fetched, requests;
    next to a classic `ctr images pull` + `ctr run` (bench/lazy.py's classic mode);
  * cold sequential read of a large file through the mount vs the link rate;
  * warm sequential read (all chunks cached; page cache dropped, then hot) vs the same file on
    local disk;
  * metadata memory per entry of the mounted tree.

Needs the same setup as bench/lazy.py (it reuses its helpers). Loopback only.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lazy  # noqa: E402

REGFS = lazy.REGFS


def stats(mnt):
    return json.loads(lazy.sh([REGFS, "stats", "--json", mnt]).stdout)


def fetched(s):
    return sum(l["bytes_fetched"] for l in s["layers"]), sum(l["requests"] for l in s["layers"])


def mount(ref, mnt, cache, extra=()):
    t0 = time.monotonic()
    lazy.sh([REGFS, "mount", "--daemon", "--cache-dir", cache, *extra, ref, mnt])
    return lazy.ms(t0)


def umount(mnt):
    lazy.sh([REGFS, "umount", mnt], check=False)


def read_file(path):
    t0 = time.monotonic()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
    return n, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="python")
    ap.add_argument("--tag", default="regfs-opt")
    ap.add_argument("--seq-image", default="big:regfs", help="IMAGE:TAG holding the sequential-read file")
    ap.add_argument("--big-file", default="data/random-0.bin", help="file for the sequential-read figures")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=5181)
    ap.add_argument("--out", help="append the Markdown report here")
    a = ap.parse_args()
    shaper = lazy.Shaper(a.port, a.rate, a.rtt)
    host = f"127.0.0.1:{a.port}"
    ref = f"{host}/{a.image}:{a.tag}"
    rows = {"mount": [], "run": [], "bytes": [], "requests": [], "mount_requests": [], "classic": [],
            "cold_read": [], "warm_read": [], "hot_read": [], "local_warm": [], "local_hot": []}
    inodes = meta = None
    try:
        for run in range(a.runs):
            rows["classic"].append(lazy.run_classic(host, a.image, ["python3", "-c", "print(42)"], "42")["total"])
            cache = tempfile.mkdtemp(prefix="regfs-mbench-")
            mnt = tempfile.mkdtemp(prefix="regfs-mbench-mnt-")
            lazy.drop_caches()
            t_mount = mount(ref, mnt, cache, ["--no-prefetch"] if a.tag == "regfs" else [])
            s0 = stats(mnt)
            rows["mount"].append(t_mount)
            rows["mount_requests"].append(fetched(s0)[1])
            t0 = time.monotonic()
            out = lazy.sh(["chroot", mnt, "python3", "-c", "print(42)"]).stdout.strip()
            rows["run"].append(lazy.ms(t0))
            if out != "42":
                sys.exit(f"unexpected output {out!r}")
            b, r = fetched(stats(mnt))
            rows["bytes"].append(b)
            rows["requests"].append(r)
            inodes, meta = s0["inodes"], s0["metadataBytes"]
            umount(mnt)
            # Cold sequential read of the big file (fresh cache, no prefetch) vs the link rate.
            shutil.rmtree(cache, ignore_errors=True)
            cache = tempfile.mkdtemp(prefix="regfs-mbench-")
            mount(f"{host}/{a.seq_image}", mnt, cache, ["--no-prefetch"])
            lazy.drop_caches()
            path = os.path.join(mnt, a.big_file)
            n, dt = read_file(path)
            b, _ = fetched(stats(mnt))
            rows["cold_read"].append((b * 8 / 1e6) / dt / a.rate)  # fraction of the link
            # Warm: every chunk cached now; page cache dropped, then hot.
            lazy.drop_caches()
            n, dt = read_file(path)
            rows["warm_read"].append(n / dt)
            n, dt = read_file(path)
            rows["hot_read"].append(n / dt)
            local = os.path.join(cache, "local-copy")
            shutil.copyfile(path, local)
            lazy.drop_caches()
            n, dt = read_file(local)
            rows["local_warm"].append(n / dt)
            n, dt = read_file(local)
            rows["local_hot"].append(n / dt)
            umount(mnt)
            shutil.rmtree(cache, ignore_errors=True)
            os.rmdir(mnt)
            print(f"  run {run + 1}: mount {t_mount:.0f} ms, run {rows['run'][-1]:.0f} ms", file=sys.stderr)
    finally:
        shaper.stop()
    m = {k: statistics.median(v) for k, v in rows.items() if v}
    lines = [
        f"`{' '.join(sys.argv)}` — {a.image}:{a.tag} through shaper.py ({a.rate:g} Mbit/s, {a.rtt:g} ms RTT), "
        f"median of {a.runs} cold runs", "",
        "| figure | regfs | baseline (same run) | ratio |", "| --- | --- | --- | --- |",
        f"| mount ready | {m['mount']:.0f} ms, {m['mount_requests']:.0f} requests | | |",
        f"| mount + `python3 -c 'print(42)'` in a chroot | {m['mount'] + m['run']:.0f} ms | classic pull + run {m['classic']:.0f} ms | "
        f"{m['classic'] / (m['mount'] + m['run']):.1f}x faster |",
        f"| fetched by that run | {m['bytes'] / 1e6:.2f} MB in {m['requests']:.0f} requests | | |",
        f"| cold sequential read of /{a.big_file} ({a.seq_image}) | {m['cold_read'] * 100:.0f}% of the link | {a.rate:g} Mbit/s | {m['cold_read']:.2f}x |",
        f"| warm sequential read of it (chunks cached, page cache dropped) | {m['warm_read'] / 1e6:.0f} MB/s | local disk {m['local_warm'] / 1e6:.0f} MB/s | {m['warm_read'] / m['local_warm']:.2f}x |",
        f"| hot sequential read (page cache hot) | {m['hot_read'] / 1e6:.0f} MB/s | local disk {m['local_hot'] / 1e6:.0f} MB/s | {m['hot_read'] / m['local_hot']:.2f}x |",
        f"| metadata memory | {meta / inodes:.0f} bytes per entry ({inodes} entries) | reference 1,637 B/entry (testbed README) | |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        with open(a.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
