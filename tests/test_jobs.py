"""Background jobs: they outlive the reader that started them, stop on Stop, and keep each owner's latest."""

import asyncio

import pytest

from backtrans import backends
from backtrans.jobs import Jobs
from backtrans.limits import LimitError, Limits
from backtrans.owners import owner_for
from backtrans.session import JobUpdate
from backtrans.workspace import Workspace


async def _updates(count: int, delay: float, fail: str | None = None):
    for done in range(1, count + 1):
        await asyncio.sleep(delay)
        if fail and done == count:
            raise RuntimeError(fail)
        yield JobUpdate(progress=done, done=done == count)


def test_a_job_runs_in_the_background_and_its_reader_can_come_and_go():
    async def go():
        jobs = Jobs()
        ended = []
        job = jobs.start("alice", "judge", "sample", 5, _updates(5, 0.01), on_end=lambda: ended.append(1))
        assert job.running and jobs.latest("alice") is job and jobs.latest("bob") is None
        await job.changed(1.0)  # a reader looks once, then goes away
        while job.running:
            await asyncio.sleep(0.01)
        return job, ended

    job, ended = asyncio.run(go())
    assert (job.state, job.progress, job.error, ended) == ("done", 5, None, [1]) and job.version >= 5


def test_stop_cancels_a_job_and_an_error_ends_one_with_its_secret_masked():
    async def go():
        jobs = Jobs()
        slow = jobs.start("alice", "judge", "sample", 100, _updates(100, 0.05))
        await asyncio.sleep(0.12)
        assert slow.stop()
        while slow.running:
            await asyncio.sleep(0.01)
        secret = "sk-job-SECRET-0123456789abcdef"
        failing = jobs.start("bob", "judge", "x", 2, _updates(2, 0.01, fail=f"refused key {secret}"), secret=secret)
        while failing.running:
            await asyncio.sleep(0.01)
        return slow, failing, secret

    slow, failing, secret = asyncio.run(go())
    assert slow.state == "stopped" and 1 <= slow.progress < 100 and not slow.stop()
    assert failing.state == "failed" and "refused key" in failing.error and secret not in failing.error


def test_a_session_job_outlives_its_page_and_the_owners_next_page_finds_it(tmp_path, fake_llm):
    fake_llm.config.latency_s = 0.05
    workspace = Workspace(tmp_path / "w", Limits(jobs_per_owner=1))
    owner = owner_for("alice", None)
    choice = backends.choose("custom", model="fake", base_url=fake_llm.url, concurrency=4)

    async def go():
        page = workspace.session(owner)
        page.load_sample()
        job = page.start_judge(page.resolve_template("humpback"), choice)
        with pytest.raises(LimitError, match="already have 1 job"):  # the limit holds for background jobs
            page.start_judge(page.resolve_template("humpback"), choice)
        del page  # the tab is gone
        await asyncio.sleep(0.1)
        reopened = workspace.session(owner)  # the same account, another page
        assert reopened.job() is job and job.running
        while job.running:
            await job.changed(1.0)
        return reopened, job

    reopened, job = asyncio.run(go())
    assert job.state == "done" and job.progress.ok == 30 and fake_llm.requests == 30
    assert reopened.workbench.frame["score"].notna().all()
    assert workspace.gate.running(owner.key) == 0  # the job's slot is free again


def test_sessions_beyond_the_cap_are_dropped_idle_first(tmp_path):
    workspace = Workspace(tmp_path / "w", Limits(), max_sessions=3)
    first = workspace.session(owner_for("u0", None))
    for n in range(1, 6):
        workspace.session(owner_for(f"u{n}", None))
    assert len(workspace._sessions) == 3 and workspace.session(owner_for("u0", None)) is not first
