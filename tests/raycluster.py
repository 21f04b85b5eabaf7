"""A real multi-node Ray cluster on this machine, for tests and benchmarks (as tests/fakellm.py is a real server).

What a user starts by hand: `ray start --head --block`, then `ray start --block --address=HEAD` for each worker.
Each node is its own process session with its own CPUs, on its own loopback address (Ray swaps 127.0.0.1 for the
machine's interface address, but keeps 127.0.0.2, 127.0.0.3, ...; its servers still listen on every interface,
by Ray's choice), sharing one temp dir under /tmp that is removed at the end. Token authentication is on (a token
file handed to every node and driver by RAY_AUTH_TOKEN_PATH, the way Ray documents) or off (RAY_AUTH_MODE=disabled).
The nodes do not have backtrans on their path: the driver ships it, as it would to a real cluster.
A node is stopped, or lost, by killing every process of its session by PID; never `ray stop`, which ends every
Ray process on the machine, other people's too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backtrans.local import free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
# A driver's environment: this checkout's backtrans, and none of the caller's own Ray settings. Its own HOME: a
# local `ray.init()` writes ~/.ray/auth_token (Ray 2.60), and `ray start --head` then turns token auth on for
# anyone on the machine who starts a cluster.
ENV = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                        "RAY_AUTH_TOKEN_PATH")}
ENV["PYTHONPATH"] = str(ROOT)
ENV["HOME"] = tempfile.mkdtemp(prefix="backtrans-ray-home-")


class RayCluster:
    """A head and workers as separate `ray start --block` processes; stopped by PID."""

    def __init__(self, head_cpus: int = 0, workers: int = 2, token: bool = True):
        self.root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.port = free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.env = {**ENV, "HOME": str(self.root), "RAY_USAGE_STATS_ENABLED": "0"}  # never a developer's ~/.ray
        self.env["RAY_AUTH_MODE"] = "token" if token else "disabled"
        if token:
            token_file = self.root / "auth_token"
            token_file.write_text(secrets.token_hex(32))
            token_file.chmod(0o600)
            self.env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
        self.env.pop("PYTHONPATH", None)  # the cluster gets backtrans from the driver (runtime_env py_modules)
        self.nodes: dict[str, subprocess.Popen] = {}  # node IP -> its `ray start --block`
        self.workers_started = 0
        try:
            self._start("127.0.0.2", head_cpus, ["--head", f"--port={self.port}", "--include-dashboard=false",
                                                 f"--temp-dir={self.root / 'ray'}"])
            for _ in range(workers):
                self.add_worker()
        except BaseException:
            self.stop()
            raise

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a command that joins this cluster (token included when auth is on)."""
        env = {**ENV, "HOME": str(self.root), "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": self.env["RAY_AUTH_MODE"]}
        if "RAY_AUTH_TOKEN_PATH" in self.env:
            env["RAY_AUTH_TOKEN_PATH"] = self.env["RAY_AUTH_TOKEN_PATH"]
        return {**env, **extra}

    def add_worker(self) -> str:
        ip = f"127.0.0.{3 + self.workers_started}"  # a new address for each, as a new machine would have
        self.workers_started += 1
        self._start(ip, 1, [f"--address={self.address}"])
        return ip

    def _start(self, ip: str, cpus: int, role: list[str]) -> None:
        ports = [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port",
                                                        "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "metrics-export-port", "runtime-env-agent-port")]
        log = (self.root / f"node-{ip}.log").open("wb")
        self.nodes[ip] = subprocess.Popen(
            [RAY, "start", "--block", *role, f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--disable-usage-stats",
             "--object-store-memory=150000000", *ports],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        # One node at a time: two raylets registering at once on two busy cores can time out. `ray start`
        # says "Ray runtime started." once its node is registered with the GCS.
        deadline = time.monotonic() + 120
        while "Ray runtime started." not in self.log(ip):
            if self.nodes[ip].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {ip} did not start:\n" + self.log(ip)[-3000:])
            time.sleep(0.5)

    def log(self, ip: str) -> str:
        return (self.root / f"node-{ip}.log").read_text(errors="replace")

    def query(self, body: str, *args: str) -> object:
        """Run `body` in a driver joined to the cluster (with its token); it prints one JSON line."""
        script = ("import json, sys, ray\nfrom ray._private import state\n"
                  "ray.init(log_to_driver=False, configure_logging=False)\n" + body)
        done = subprocess.run([sys.executable, "-c", script, *args], env=self.driver_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def alive_nodes(self) -> dict[str, float]:
        """Live node IP -> CPUs, from the GCS's node table."""
        return self.query("print(json.dumps({n['NodeManagerAddress']: n['Resources'].get('CPU', 0)\n"
                          "                  for n in ray.nodes() if n['Alive']}))")

    def actors(self, driver_pid: int) -> list[dict]:
        """The pool actors of the job whose driver had `driver_pid`: state and node IP, from the GCS's job and
        actor tables (Ray's state API proper, ray.util.state, needs the dashboard, which ray[data] lacks)."""
        return self.query(
            "jobs = [j['JobID'] for j in state.state.job_table() if j['DriverPid'] == int(sys.argv[1])]\n"
            "ips = {n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes()}\n"
            "found = [a for job in jobs for a in state.actors(job_id=ray.JobID(bytes.fromhex(job))).values()\n"
            "         if '(_Worker)' in a['ActorClassName']]\n"
            "print(json.dumps([{'state': a['State'], 'node': ips.get(a['Address']['NodeID']),\n"
            "                   'restarts': a['NumRestarts']} for a in found]))\n", str(driver_pid))

    def kill(self, ip: str) -> None:
        """The node is lost: every process of its session is killed at once, as a crashed machine would."""
        leader = self.nodes.pop(ip)
        for pid in _session(leader.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        leader.wait(30)

    def stop(self) -> None:
        for ip in sorted(self.nodes, reverse=True):  # workers, then the head
            self.kill(ip)
        shutil.rmtree(self.root, ignore_errors=True)


def _session(leader: int) -> list[int]:
    """PIDs of the processes in the session `leader` started (a node's raylet, GCS, agents and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == leader:
                found.append(int(entry.name))
    return found
