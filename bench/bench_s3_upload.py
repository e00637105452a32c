"""Peak memory of the dump upload: a ~100 MB file vs a >= 1 GB file, to a moto S3 server on loopback.

    PYTHONPATH=plugins .venv/bin/python bench/bench_s3_upload.py [--small-mb 100] [--big-mb 1100]

Each upload runs in a fresh child process (``--child``) that builds the same S3Hook as ``dump_to_s3``
(:func:`pgrepl.s3_dump.make_hook`) and calls :func:`pgrepl.s3_dump.upload_file`; the child reports its peak
RSS (``ru_maxrss``) before and after the upload. moto runs in its own process, so the objects it keeps
do not count. For contrast, the seed's way (read the whole dump into memory, then one ``put_object``)
runs on the small file only.

The files are random bytes, not real ``pg_dump`` archives: a custom-format dump is already compressed,
so random data has the same shape for an upload, and generating a 1 GB dump here would take far longer
than the upload. The upload code path is the one the DAG runs.

Prints one line per run and the ratio big/small of the peak RSS (near 1 means memory does not grow with
the dump's size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]

MB = 1024 * 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One upload in this process; print a JSON line with the figures."""
    from pgrepl.s3_dump import load_settings, make_hook, upload_file

    env = {"SOURCE_DATABASE_URL": "postgresql://bench@127.0.0.1:1/unused", "REPLICATION_WORK_DIR": "/tmp",
           "S3_ENDPOINT": args.endpoint, "S3_REGION": "us-east-1", "S3_BUCKET_NAME": args.bucket,
           "S3_ACCESS_KEY": args.access_key, "S3_SECRET_ACCESS_KEY": args.secret_key}
    hook = make_hook(load_settings(env))
    client = hook.get_conn()
    client.list_objects_v2(Bucket=args.bucket, MaxKeys=1)  # connection pool and signer warmed up
    before = peak_rss_mb()
    started = time.monotonic()
    if args.mode == "streamed":
        upload_file(hook, args.file, args.bucket, args.key, log_line=lambda line: None)
    else:  # the seed: whole dump in memory, one request
        with open(args.file, "rb") as handle:
            blob = handle.read()
        client.put_object(Bucket=args.bucket, Key=args.key, Body=blob)
    seconds = time.monotonic() - started
    size = os.path.getsize(args.file)
    print(json.dumps({"mode": args.mode, "size_mb": round(size / MB, 1), "rss_before_mb": round(before, 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "seconds": round(seconds, 1),
                      "mb_per_s": round(size / MB / seconds, 1)}))


def make_file(path: Path, size_mb: int) -> None:
    block = os.urandom(MB)
    with open(path, "wb") as handle:
        for i in range(size_mb):
            # cheap "random-ish" bytes: a fresh random prefix per MiB keeps every part distinct
            handle.write(os.urandom(64) + block[64:])


def run_child(file: Path, mode: str, key: str, s3, bucket: str) -> dict:
    argv = [sys.executable, __file__, "--child", "--mode", mode, "--file", str(file), "--key", key,
            "--endpoint", s3.endpoint, "--bucket", bucket, "--access-key", s3.access_key,
            "--secret-key", s3.secret_key]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    from moto_helpers import moto_server

    with tempfile.TemporaryDirectory(prefix="pgrepl-bench-s3-") as tmp, moto_server(auth=True) as s3:
        folder = Path(tmp)
        s3.client().create_bucket(Bucket="bench")
        results = []
        for label, size in (("small", args.small_mb), ("big", args.big_mb)):
            path = folder / f"{label}.bin"
            make_file(path, size)
            result = run_child(path, "streamed", f"{label}-streamed", s3, "bench")
            results.append(result)
            print(f"streamed upload {result['size_mb']:>8} MB: peak RSS {result['peak_rss_mb']:>7} MB "
                  f"(before upload {result['rss_before_mb']} MB), {result['seconds']} s, {result['mb_per_s']} MB/s",
                  flush=True)
            if label == "small" and not args.skip_seed:
                seed = run_child(path, "in-memory", f"{label}-in-memory", s3, "bench")
                print(f"seed-style read-all {seed['size_mb']:>6} MB: peak RSS {seed['peak_rss_mb']:>7} MB "
                      f"(before upload {seed['rss_before_mb']} MB), {seed['seconds']} s", flush=True)
            path.unlink()
            s3.client().delete_object(Bucket="bench", Key=f"{label}-streamed")
        small, big = results
        print(f"size ratio big/small: {big['size_mb'] / small['size_mb']:.1f}; "
              f"peak RSS ratio big/small: {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-mb", type=int, default=100)
    parser.add_argument("--big-mb", type=int, default=1100)
    parser.add_argument("--skip-seed", action="store_true", help="do not run the seed's read-all upload")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--mode", "--file", "--key", "--endpoint", "--bucket", "--access-key", "--secret-key"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    child(parsed) if parsed.child else main(parsed)
