"""A real Redis Cluster on loopback: three primaries, three replicas.

Six `redis-server` processes in cluster mode, each in a temp dir of its own,
joined by `redis-cli --cluster create --cluster-replicas 1`. A short
`cluster-node-timeout` makes a killed primary's replica take over in about
two seconds, so a failover test stays short.
"""

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync

from tests.support.secure_redis import Certificates

PRIMARIES = 3
REPLICAS_PER_PRIMARY = 1
# Short enough for a quick failover, long enough for a loaded 2-core machine
# not to take a slow reply for a dead node.
NODE_TIMEOUT_MS = 1500
READY_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0
# How long a primary takes writes alone before it is killed (kill_primary's cut_off_first).
CUT_OFF_S = 0.3

# A node also listens on its port + 10000 (the cluster bus). Both stay below
# Linux's ephemeral range (from 32768), so no outgoing connection takes the
# port of a node while it is down for a restart.
MIN_PORT, MAX_PORT = 10000, 22767
BUS_PORT_OFFSET = 10000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A port that was free a moment ago, and its cluster bus port too."""
    for _ in range(1000):
        port = random.randint(MIN_PORT, MAX_PORT)
        if _bindable(port) and _bindable(port + BUS_PORT_OFFSET):
            return port
    raise RuntimeError("no free pair of ports for a cluster node")


@dataclass(frozen=True, slots=True)
class Security:
    """What each node of a secured cluster wants: a password, TLS with this CA's certificate."""

    password: str
    certificates: Certificates

    def server_args(self) -> list[str]:
        certs = self.certificates
        args = ["--requirepass", self.password, "--masterauth", self.password]
        args += ["--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file)]
        args += ["--tls-ca-cert-file", str(certs.ca_file), "--tls-auth-clients", "no"]
        # Replication and the cluster bus speak TLS too: no plain port at all.
        return [*args, "--tls-replication", "yes", "--tls-cluster", "yes"]

    def client_options(self) -> dict[str, Any]:
        return {
            "password": self.password,
            "ssl": True,
            "ssl_ca_certs": str(self.certificates.ca_file),
        }

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.certificates.ca_file), "-a", self.password]


@dataclass(eq=False)
class ClusterNodeProcess:
    """One `redis-server` of the cluster; its dir keeps nodes.conf across a restart."""

    binary: str
    port: int
    dir: Path
    security: Security | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1"]
        if self.security is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), *self.security.server_args()]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        # No slot left unserved takes the others down: keys elsewhere stay usable.
        args += ["--cluster-require-full-coverage", "no"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        args += ["--enable-debug-command", "local"]  # DEBUG SLEEP: a node that hangs a while
        log = (self.dir / "server.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on {self.port}: {self.dir}")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with self.client(socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis_sync.RedisError:
            return False

    def client(self, socket_timeout: float = 2.0) -> redis_sync.Redis:
        options = self.security.client_options() if self.security else {}
        return redis_sync.Redis(port=self.port, socket_timeout=socket_timeout, **options)

    def cluster_info(self) -> dict[str, str]:
        """CLUSTER INFO as fields (`cluster_state`: ok or fail)."""
        with self.client() as client:
            # Split, so redis-py hands back Redis' own text.
            raw = client.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def slot_owners(self) -> dict[int, list[range]]:
        """Per primary port: the slots this node believes it serves (CLUSTER NODES)."""
        with self.client() as client:
            raw = client.execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        owners: dict[int, list[range]] = {}
        for line in text.splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            if "master" not in flags or "fail" in flags or len(fields) < 9:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            owners[port] = []
            for entry in fields[8:]:
                if not entry.startswith("["):  # not a slot being migrated
                    first, _, last = entry.partition("-")
                    owners[port].append(range(int(first), int(last or first) + 1))
        return owners

    def role(self) -> str:
        with self.client() as client:
            reply = client.execute_command("ROLE")
        role: bytes = reply[0]
        return role.decode()

    def hang(self, seconds: float) -> None:
        """DEBUG SLEEP: the node answers nothing for `seconds`, then runs what came meanwhile.

        Below the cluster's node timeout, it is a hang, not a failover."""
        with self.client(socket_timeout=seconds + 5) as direct:
            direct.execute_command("DEBUG", "SLEEP", seconds)

    def freeze(self) -> None:
        """SIGSTOP: alive, but reads and answers nothing."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last words to the replicas."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None


@dataclass(eq=False)
class LocalCluster:
    """Three primaries and their replicas on 127.0.0.1, started and torn down together."""

    binary: str = field(default_factory=lambda: shutil.which("redis-server") or "redis-server")
    primaries_wanted: int = PRIMARIES
    replicas_per_primary: int = REPLICAS_PER_PRIMARY
    security: Security | None = None
    nodes: list[ClusterNodeProcess] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="conveyor-cluster-")))

    @property
    def seed_url(self) -> str:
        """A `redis+cluster://` URL naming two seed nodes (any one is enough)."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])
        scheme = "rediss+cluster" if self.security else "redis+cluster"
        return f"{scheme}://{seeds}"

    def start(self) -> "LocalCluster":
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (make test-deps installs redis-tools)")
        for _ in range(self.primaries_wanted * (1 + self.replicas_per_primary)):
            port = free_cluster_port()
            node_dir = self.root / str(port)
            node_dir.mkdir()
            node = ClusterNodeProcess(self.binary, port, node_dir, self.security)
            self.nodes.append(node)
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        replicas = str(self.replicas_per_primary)
        secure = self.security.cli_args() if self.security else []
        create = ["--cluster", "create", *addresses, "--cluster-replicas", replicas]
        subprocess.run(
            [cli, *secure, *create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
        )
        self.wait_until_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> list[ClusterNodeProcess]:
        return [node for node in self.nodes if node.running]

    def primaries(self) -> list[ClusterNodeProcess]:
        return [node for node in self.running() if node.role() == "master"]

    def replicas(self) -> list[ClusterNodeProcess]:
        return [node for node in self.running() if node.role() == "slave"]

    def wait_until_ok(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every running node says `cluster_state:ok`, with 3 primaries each replicated."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._ok():
                    return
            except redis_sync.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster in {self.root} did not become ok")
            time.sleep(0.1)

    def _ok(self) -> bool:
        running = self.running()
        if not all(node.cluster_info().get("cluster_state") == "ok" for node in running):
            return False
        primaries = self.primaries()
        if len(primaries) != self.primaries_wanted:
            return False
        # Every replica has finished its first sync (else a WAIT or a
        # failover right after sees no replica).
        for replica in self.replicas():
            with replica.client() as client:
                info = client.info("replication")
            if info.get("master_link_status") != "up":
                return False
        # And every primary counts its replica online: after a diskless sync a
        # primary waits for the replica's first ACK (up to a second after the
        # replica says its link is up), and a WAIT until then counts none.
        online = 0
        for primary in primaries:
            with primary.client() as client:
                info = client.info("replication")
            online += sum(
                1
                for name, value in info.items()
                if name.startswith("slave") and isinstance(value, dict)
                if value.get("state") == "online"
            )
        if online != len(self.replicas()):
            return False
        return len(running) == len(self.nodes)

    def flushall(self) -> None:
        """Empty every primary (their replicas follow); scripts stay cached."""
        for node in self.primaries():
            with node.client() as client:
                client.flushall()

    def primary_of(self, key: str) -> ClusterNodeProcess:
        with self.nodes[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for port, ranges in self.running()[0].slot_owners().items():
            if any(slot in slots for slots in ranges):
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no primary serves the slot of {key!r}")

    def replica_of(self, primary: ClusterNodeProcess) -> ClusterNodeProcess:
        for node in self.replicas():
            with node.client() as client:
                info = client.info("replication")
            if int(info["master_port"]) == primary.port:
                return node
        raise LookupError(f"no replica follows {primary.port}")

    def kill_primary(
        self, primary: ClusterNodeProcess, *, cut_off_first: bool = False
    ) -> ClusterNodeProcess:
        """SIGKILL `primary`; return its replica once that serves the slots as primary.

        `cut_off_first`: first cut the replica off (frozen, its link closed by
        the primary), so what the primary takes from then on never reaches
        it: the writes a failover loses, made certain.
        """
        replica = self.replica_of(primary)
        if cut_off_first:
            replica.freeze()
            with primary.client() as direct:
                direct.execute_command("CLIENT", "KILL", "TYPE", "replica")
            # Writes go on meanwhile, to the primary alone.
            time.sleep(CUT_OFF_S)
        primary.kill()
        replica.thaw()
        return self.wait_for_promotion(replica, primary)

    def wait_for_promotion(
        self, replica: ClusterNodeProcess, primary: ClusterNodeProcess
    ) -> ClusterNodeProcess:
        """`replica`, once it serves `primary`'s slots as primary."""
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        while True:
            try:
                if replica.role() == "master" and replica.cluster_info()["cluster_state"] == "ok":
                    return replica
            except redis_sync.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica.port} did not take over from {primary.port}")
            time.sleep(0.05)

    def restore(self) -> None:
        """Restart every stopped node (each rejoins as a replica) and wait until ok."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_until_ok()


@contextmanager
def local_cluster(**options: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(**options)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextmanager
def lone_cluster_node(directory: Path) -> Iterator[ClusterNodeProcess]:
    """A node in cluster mode in no cluster: it serves no slot, so every key
    answers CLUSTERDOWN (as a cluster does while a shard has no primary)."""
    binary = shutil.which("redis-server") or "redis-server"
    node = ClusterNodeProcess(binary, free_cluster_port(), directory)
    node.start()
    try:
        yield node
    finally:
        node.stop()
