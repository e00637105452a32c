"""A moto S3 server in its own process on loopback, with real credential checks.

A subprocess (rather than ``moto.server.ThreadedMotoServer`` in the test process) keeps moto's global
state (backends, auth counter) away from other tests and keeps the objects moto holds out of the memory
the benchmark measures. With ``auth=True`` the server knows one IAM user allowed everything and rejects
any other key, so wrong-credential cases are real.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))

    def env(self, bucket: str, prefix: str = "pix-dump", **overrides: str) -> dict[str, str]:
        """The seed's ``S3_*`` variables for this server."""
        env = {"S3_ENDPOINT": self.endpoint, "S3_REGION": self.region, "S3_BUCKET_NAME": bucket,
               "S3_OBJECT_NAME_PREFIX": prefix, "S3_ACCESS_KEY": self.access_key,
               "S3_SECRET_ACCESS_KEY": self.secret_key, "S3_SSL_ENABLED": "false"}
        env.update(overrides)
        return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(endpoint: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _enable_auth(endpoint: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="dumper")
    iam.put_user_policy(UserName="dumper", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="dumper")["AccessKey"]
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def moto_server(auth: bool = True, log_file: Path | None = None) -> Iterator[MotoS3]:
    """Start ``python -m moto.server`` on a free loopback port; stop it on exit."""
    port = _free_port()
    out = open(log_file, "wb") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(endpoint, proc)
        access_key, secret_key = _enable_auth(endpoint) if auth else ("testing", "testing")
        yield MotoS3(endpoint, access_key, secret_key)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_file:
            out.close()
