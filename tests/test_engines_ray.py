"""`--engine ray` against the fake server: a local Ray started by the CLI, and real multi-node clusters.

The clusters (tests/raycluster.py) are started as a user starts one, `ray start` per node, one CPU per worker,
and stopped by PID. Where work ran is read from Ray's own state (the GCS job and actor tables).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backtrans.local import free_port
from tests.conftest import ROOT, results_in, write_jsonl
from tests.raycluster import ENV, RayCluster

pytest.importorskip("ray")


@pytest.fixture(scope="session")
def cluster():
    """The production habit: a head with no CPUs (no work runs there), two 1-CPU workers, token auth on."""
    started = RayCluster(head_cpus=0, workers=2, token=True)
    yield started
    started.stop()


def _score(server, src, out, store, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backtrans", "score", str(src), "-o", str(out), "--base-url", server.url,
         "--model", "m", "--store", str(store), "--engine", "ray", "--concurrency", "32", "--no-progress", *extra],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.ray
def test_2000_pairs_on_a_local_ray_cluster_in_order_then_a_rerun_makes_no_request(fake_process, tmp_path):
    server = fake_process("--latency", "0.02")
    rows = [{"id": i, "instruction": f"ray {i}: explain [[score={i % 5 + 1}]]", "generation": f"answer {i}"}
            for i in range(2000)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
    done = _score(server, src, out, store)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == list(range(2000))  # in input order
    assert [r["score"] for r in scored] == [i % 5 + 1 for i in range(2000)]
    assert all(r["status"] == "ok" for r in scored)
    first = server.stats()["requests"]
    assert 2000 <= first <= 2000 * 1.05  # one request per pair (a few hedges at most)
    shards = sorted((tmp_path / "s.sqlite.shards").glob("shard-*.sqlite"))
    assert shards, "each actor keeps its own store shard"
    assert "Done: 2000 rows in" in done.stderr

    again = _score(server, src, tmp_path / "again.jsonl", store)
    assert again.returncode == 0, again.stderr[-3000:]
    assert server.stats()["requests"] == first  # a rerun finds every row in the shards
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert "2000 from the store" in again.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_parquet_in_and_a_folder_of_parquet_shards_out(fake_process, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    server = fake_process()
    rows = [{"prompt": f"pq {i} [[score={i % 5 + 1}]]", "response": f"a{i}", "n": i} for i in range(300)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    done = _score(server, tmp_path / "in.parquet", tmp_path / "scored", tmp_path / "s.sqlite")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(tmp_path / "scored")
    assert table.num_rows == 300 and {"instruction", "generation", "score", "status"} <= set(table.column_names)
    assert sorted(table.column("n").to_pylist()) == list(range(300))
    by_n = dict(zip(table.column("n").to_pylist(), table.column("score").to_pylist(), strict=True))
    assert all(by_n[i] == i % 5 + 1 for i in range(300))


def _generate_and_augment(server, tmp_path: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    """generate (rows with a response keep it, uncalled) and augment (candidates in document order); returns the
    finished commands, whose PIDs name their Ray jobs."""
    common = ["--base-url", server.url, "--model", "m", "--concurrency", "8", "--no-progress", "--engine", "ray"]
    asked = [{"instruction": f"question {i}", **({"generation": "kept"} if i % 3 == 0 else {})} for i in range(60)]
    write_jsonl(tmp_path / "asked.jsonl", asked)
    done = _cli(["generate", str(tmp_path / "asked.jsonl"), "-o", str(tmp_path / "answered.jsonl"), "--store",
                 str(tmp_path / "g.sqlite"), *common], env)
    assert done.returncode == 0, done.stderr[-3000:]
    answered = [json.loads(line) for line in (tmp_path / "answered.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in answered] == [r["instruction"] for r in asked]
    assert all(r["generation"] == "kept" for r in answered[::3])
    assert all(r["generation"].startswith("A response") for i, r in enumerate(answered) if i % 3)
    assert server.stats()["requests"] == 40

    import random

    words = ("yeast flour river granite orbit violin copper tide maple lantern harbor cipher meadow falcon "
             "quartz ember glacier saffron tundra beacon").split()
    rng = random.Random(5)
    documents = [{"text": f"# Topic {i}\n" + " ".join(rng.choice(words) for _ in range(60)) + f" Number {i}."}
                 for i in range(12)]
    write_jsonl(tmp_path / "docs.jsonl", documents)
    augmented = _cli(["augment", str(tmp_path / "docs.jsonl"), "-o", str(tmp_path / "candidates.jsonl"), "--store",
                      str(tmp_path / "a.sqlite"), "--min-chars", "100", *common], env)
    assert augmented.returncode == 0, augmented.stderr[-3000:]
    candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 12 and all(c["instruction"] for c in candidates)
    assert [int(c["generation"].rsplit(" ", 1)[1].rstrip(".")) for c in candidates] == list(range(12))
    assert server.stats()["requests"] == 40 + 12
    return [done, augmented]


@pytest.mark.slow
@pytest.mark.ray
def test_generate_and_augment_take_the_ray_engine_too(fake_process, tmp_path):
    _generate_and_augment(fake_process(), tmp_path, ENV)


class Finished(subprocess.CompletedProcess):
    pid: int
    wall_s: float


def _cli(args: list[str], env: dict[str, str], timeout: float = 600) -> Finished:
    """`python -m backtrans ARGS`, with its PID (the driver's: Ray's job table names it) and wall time."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "backtrans", *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    done = Finished(process.args, process.returncode, stdout, stderr)
    done.pid, done.wall_s = process.pid, time.monotonic() - started
    return done


def _pairs(n: int) -> list[dict]:
    return [{"id": i, "instruction": f"cluster {i}: explain [[score={i % 5 + 1}]]", "generation": f"answer {i}"}
            for i in range(n)]


def _score_args(server, src: Path, out: Path, store: Path, *extra: str) -> list[str]:
    return ["score", str(src), "-o", str(out), "--base-url", server.url, "--model", "m", "--store", str(store),
            "--engine", "ray", *extra]


def _in_order_and_ok(out: Path, n: int) -> None:
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == list(range(n))  # every row once, in input order
    assert [r["score"] for r in scored] == [i % 5 + 1 for i in range(n)]
    assert all(r["status"] == "ok" for r in scored)


def _finished_in_store(store: Path) -> int:
    return sum(results_in(shard) for shard in Path(f"{store}.shards").glob("shard-*.sqlite"))


def _wait_for_requests(server, count: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while server.stats()["requests"] < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests in {timeout_s}s"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.ray
def test_3000_pairs_through_a_two_node_cluster_it_did_not_start_with_default_settings(cluster, fake_process,
                                                                                      tmp_path):
    server = fake_process("--latency", "0.05")
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(3000))
    out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
    done = _cli(_score_args(server, src, out, store), cluster.driver_env())  # default settings, progress bar on
    assert done.returncode == 0, done.stderr[-3000:]
    _in_order_and_ok(out, 3000)
    requests = server.stats()["requests"]
    assert 3000 <= requests <= 3000 * 1.05  # about one request per pair (a few hedges at most)
    # Sized to the cluster: the head has no CPUs, each worker one: one actor each, 16 requests in flight each.
    assert "ray: 2 actors x --concurrency 16 = 32 requests in flight" in done.stderr
    nodes = {a["node"] for a in cluster.actors(done.pid)}
    assert nodes == {"127.0.0.3", "127.0.0.4"}, nodes  # Ray's own tables: work on both workers, none on the head
    # Progress as rows finish, not only at the end: the bar passes through counts in between.
    shown = {int(n) for n in re.findall(r"(\d+)/3000 \[", done.stderr)}
    assert len({n for n in shown if 0 < n < 3000}) >= 3, sorted(shown)

    again = _cli(_score_args(server, src, tmp_path / "again.jsonl", store, "--no-progress"), cluster.driver_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert server.stats()["requests"] == requests  # every row from the store shards
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert "3000 from the store" in again.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_generate_and_augment_through_the_cluster_run_on_its_workers(cluster, fake_process, tmp_path):
    runs = _generate_and_augment(fake_process(), tmp_path, cluster.driver_env())
    for run in runs:
        assert {a["node"] for a in cluster.actors(run.pid)} == {"127.0.0.3", "127.0.0.4"}


@pytest.mark.slow
@pytest.mark.ray
def test_without_the_token_the_command_says_how_to_pass_it(cluster, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(3))
    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text()
    env = {k: v for k, v in cluster.driver_env().items() if not k.startswith("RAY_AUTH")}
    for wrong in (env, {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        done = _cli(["score", str(src), "-o", str(tmp_path / "out.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                     "--model", "m", "--store", str(tmp_path / "s.sqlite"), "--engine", "ray"], wrong)
        assert done.returncode == 1, done.stderr[-3000:]
        assert f"the cluster at {cluster.address} asks for its token" in done.stderr
        assert "RAY_AUTH_TOKEN_PATH" in done.stderr and token not in done.stderr
        assert done.wall_s < 60
        assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.ray
def test_an_address_where_no_ray_answers_is_said_at_once(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(3))
    port = free_port()
    done = _cli(["score", str(src), "-o", str(tmp_path / "out.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                 "--model", "m", "--store", str(tmp_path / "s.sqlite"), "--engine", "ray", "--ray-address",
                 f"127.0.0.1:{port}"], ENV)
    assert done.returncode == 1
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in done.stderr
    assert done.wall_s < 30


@pytest.mark.slow
@pytest.mark.ray
def test_more_actors_than_the_cluster_holds_is_refused_before_any_call(cluster, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(10))
    done = _cli(["score", str(src), "-o", str(tmp_path / "out.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                 "--model", "m", "--store", str(tmp_path / "s.sqlite"), "--engine", "ray", "--actors", "4"],
                cluster.driver_env())
    assert done.returncode == 1
    assert ("the actor pool needs 2 CPUs (4 actors x 0.5), and reading 0.25 more on one node; the cluster has 2 "
            "in all") in done.stderr
    assert done.wall_s < 60


HOLD = """
import ray, sys, time
ray.init(log_to_driver=False, configure_logging=False)
@ray.remote(num_cpus=1)
class Hold:
    def ready(self):
        return True
held = [Hold.remote() for _ in range(int(sys.argv[1]))]
ray.get([h.ready.remote() for h in held])
print("held", flush=True)
time.sleep(3600)
"""


@pytest.mark.slow
@pytest.mark.ray
def test_cpus_held_by_another_job_the_command_says_what_it_waits_for_and_exits(cluster, fake_process, tmp_path):
    server = fake_process()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "2"], env=cluster.driver_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # both workers' CPUs belong to another job now
        src = write_jsonl(tmp_path / "in.jsonl", _pairs(100))
        store = tmp_path / "s.sqlite"
        done = _cli(_score_args(server, src, tmp_path / "out.jsonl", store, "--no-progress"), cluster.driver_env())
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, done.stderr[-3000:]
    assert "ray: waiting for CPUs: the actor pool needs 1 CPU" in done.stderr  # said at the start
    assert "no progress is possible: the actor pool needs 1 CPU; the cluster has 0 free" in done.stderr
    assert "No row was finished; run the same command again once the cluster has room" in done.stderr
    assert done.wall_s < 90  # within a minute of the start (Ray's own start-up aside)
    assert server.stats()["requests"] == 0 and not (tmp_path / "out.jsonl").exists()


def _score_in_background(cluster, server, src, out, store) -> subprocess.Popen:
    """`score` through the cluster in its own process, so the test can take nodes away while it runs."""
    return subprocess.Popen([sys.executable, "-m", "backtrans", *_score_args(server, src, out, store, "--no-progress",
                                                                            "--no-hedge")],
                            cwd=ROOT, env=cluster.driver_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.ray
def test_a_worker_lost_mid_run_the_job_finishes_on_the_node_that_remains(fake_process, tmp_path):
    # Token auth off, and a head that takes work (1 CPU): the other habits a cluster may have.
    lost_cluster = RayCluster(head_cpus=1, workers=1, token=False)
    try:
        server = fake_process("--latency", "0.25")
        src = write_jsonl(tmp_path / "in.jsonl", _pairs(2000))
        out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
        process = _score_in_background(lost_cluster, server, src, out, store)
        try:
            _wait_for_requests(server, 400)
            lost_cluster.kill("127.0.0.3")
            _, stderr = process.communicate(timeout=400)
        finally:
            process.kill()
        assert process.returncode == 0, stderr[-3000:]
        _in_order_and_ok(out, 2000)
        stats = server.stats()
        assert stats["unique_prompts"] == 2000
        # Only the calls in flight on the lost node are asked again: one actor's --concurrency (16).
        assert stats["repeated_prompts"] <= 16, stats
        assert "ray: node 127.0.0.3 left the cluster" in stderr
        assert "Done: 2000 rows" in stderr
        actors = lost_cluster.actors(process.pid)
        assert {a["node"] for a in actors} == {"127.0.0.2"} and max(a["restarts"] for a in actors) >= 1, actors
    finally:
        lost_cluster.stop()


@pytest.mark.slow
@pytest.mark.ray
def test_every_worker_lost_the_command_says_so_and_exits_then_a_rerun_resumes(fake_process, tmp_path):
    dead_cluster = RayCluster(head_cpus=0, workers=1, token=False)
    try:
        server = fake_process("--latency", "0.25")
        src = write_jsonl(tmp_path / "in.jsonl", _pairs(2000))
        out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
        process = _score_in_background(dead_cluster, server, src, out, store)
        try:
            _wait_for_requests(server, 300)
            dead_cluster.kill("127.0.0.3")
            lost_at = time.monotonic()
            _, stderr = process.communicate(timeout=300)
            stopped_after = time.monotonic() - lost_at
        finally:
            process.kill()
        assert process.returncode == 1, stderr[-3000:]
        assert "no progress is possible: node 127.0.0.3 left the cluster; the actor pool needs 0.5 CPUs; the " \
               "cluster has 0 free" in stderr
        # Ray takes up to ~30 s to call a silent node dead; the watch then waits STALL_S (30 s) without progress.
        assert stopped_after < 120, stopped_after
        finished = _finished_in_store(store)
        said = re.search(r"At least (\d+) rows are finished and in the store; run the same command again", stderr)
        assert said and 0 < int(said[1]) <= finished < 2000, (said, finished)
        asked = server.stats()["requests"]

        dead_cluster.add_worker()
        again = _cli(_score_args(server, src, out, store, "--no-progress", "--no-hedge"), dead_cluster.driver_env())
        assert again.returncode == 0, again.stderr[-3000:]
        _in_order_and_ok(out, 2000)
        assert server.stats()["requests"] - asked == 2000 - finished  # no finished row is asked for again
    finally:
        dead_cluster.stop()
