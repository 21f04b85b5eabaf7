"""The Gradio face as strangers reach it: every named endpoint through gradio_client, an attacker who probes
them with other owners' run ids and server paths, and sign-in with Gradio's mocked Hugging Face OAuth."""

import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import app
from backtrans import local
from tests.conftest import JUDGE, AppServer, LoopbackServer, QuietHandler, client_for, upload, write_jsonl

pytestmark = pytest.mark.slow

SECRET_TEXT = "ALICE-PRIVATE-ROW"


def test_the_ui_is_built_by_a_function_not_at_import():
    assert not hasattr(app, "demo")
    demo = app.create_app()
    names = set(demo.get_api_info()["named_endpoints"])
    assert {"/load_sample", "/inspect_upload", "/judge", "/list_runs", "/resume_run", "/delete_my_data"} <= names


def test_named_endpoints_through_gradio_client(fake_process, tmp_path):
    server = fake_process()
    served = AppServer(tmp_path, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    try:
        client = client_for(served.url)
        preview, message, *_ = client.predict(api_name="/load_sample")
        assert "Loaded **30** pairs" in message
        table, *_, status = client.predict(**JUDGE, api_name="/judge")
        assert len(table["data"]) == 30 and "**Done:** 30 rows" in status
        assert server.stats()["requests"] == 30
        src = write_jsonl(tmp_path / "my own file.jsonl", [{"instruction": "q", "generation": "a"}])
        preview, message, *_ = upload(client, src)
        assert "Loaded **1** pairs from `my own file.jsonl`" in message  # the name the user knows
        runs = client.predict(api_name="/list_runs")
        assert [label.split(" · ")[2] for label, _ in runs["choices"]] == ["the bundled sample"]

        # Re-ask, the judge's setting in the page: a reply with no score is asked again as often as it says.
        src = write_jsonl(tmp_path / "unsure.jsonl", [
            {"instruction": "parses on the second ask [[score=5]] [[no-score=1]]", "generation": "a"},
            {"instruction": "never parses [[no-score=9]]", "generation": "b"}])
        upload(client, src)
        before = server.stats()["requests"]
        *_, status = client.predict(**{**JUDGE, "reask": "0"}, api_name="/judge")
        assert "0 ok · 2 parse errors" in status and "re-ask" not in status
        assert server.stats()["requests"] - before == 2
        *_, status = client.predict(**{**JUDGE, "reask": "2"}, api_name="/judge")  # the stored parse errors again
        assert "1 ok · 1 parse errors" in status and "3 re-asks (1 parsed on one)" in status
        assert server.stats()["requests"] - before == 2 + 1 + 2
        upload(client, write_jsonl(tmp_path / "unsure 2.jsonl", [
            {"instruction": "the template's setting [[score=3]] [[no-score=1]]", "generation": "c"}]))
        *_, status = client.predict(**JUDGE, api_name="/judge")  # empty: the template's setting (1)
        assert "1 ok · 0 parse errors" in status and "1 re-ask (1 parsed on one)" in status

        # Judging again with the reviewers' examples needs their decisions: refused, in words, before any pull.
        settings = {key: value for key, value in JUDGE.items() if key not in ("template_name", "custom_text")}
        *_, status = client.predict(**settings, api_name="/rejudge")
        assert status == "**Cannot start.** Pull reviewers' decisions first."
    finally:
        served.stop()


def raw_call(url: str, api_name: str, data: list) -> str:
    """A call over Gradio's plain HTTP API, with a file path that no upload made (gradio_client would upload it)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/gradio_api/call/{api_name}", method="POST",
                                     data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        event_id = json.load(urllib.request.urlopen(request))["event_id"]
        with urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/call/{api_name}/{event_id}") as stream:
            return stream.read().decode()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"


def _probe_texts(client, alice_run: str, paths: list[str]) -> list[str]:
    """Every named endpoint, called with what an attacker would try. Returns everything the app answered."""
    answers: list[str] = []

    def call(*args, **kwargs) -> None:
        try:
            answers.append(json.dumps(client.predict(*args, **kwargs), default=str))
        except Exception as exc:  # noqa: BLE001 (a refusal is an answer too; it must not leak either)
            answers.append(f"{type(exc).__name__}: {exc}")

    call(api_name="/list_runs")
    call(run_id=alice_run, api_name="/resume_run")
    for path in paths:
        call(dataset_id=path, config="", split="train", api_name="/load_hub")
        call(name=path, api_name="/load_local")
        answers.append(raw_call(client.src, "inspect_upload", [{"path": path, "meta": {"_type": "gradio.FileData"}}]))
        call(instruction_column="instruction", generation_column="generation", api_name="/load_upload")
    call(**JUDGE, api_name="/judge")
    call(backend="server", model="m", base_url="", api_key="", concurrency=4, api_name="/generate")
    call(dataset="backtrans-review", workspace="backtrans", threshold=4, api_name="/argilla_push")
    call(dataset="backtrans-review", workspace="backtrans", policy="majority", threshold=4, api_name="/argilla_pull")
    call(repo="alice/data", threshold=4, api_name="/export_hub")
    call(api_name="/delete_my_data")
    return answers


def test_an_attacker_with_gradio_client_gets_nothing_of_another_owner_or_the_server(fake_process, tmp_path):
    import tempfile

    server = fake_process()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    served = AppServer(data_dir, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    try:
        alice = client_for(served.url)
        src = write_jsonl(tmp_path / "alice-private-name.jsonl",
                          [{"instruction": f"{SECRET_TEXT} {i}", "generation": "a"} for i in range(5)])
        upload(alice, src)
        alice.predict(**JUDGE, api_name="/judge")
        alice_run = alice.predict(api_name="/list_runs")["choices"][0][1]
        kept = next((data_dir / "owners").rglob("*.jsonl"))  # alice's own copy of her upload
        link = tmp_path / "innocent.jsonl"
        link.symlink_to(kept)
        gradio_tmp = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio"))
        # Gradio's upload cache is content-addressed (a folder per sha256 of the bytes): a path into it is
        # only known to whoever already holds the file. Its folders themselves, and walks out of it, are probed.
        cached = [str(gradio_tmp), str(gradio_tmp / ".." / ".." / "etc" / "passwd"), str(gradio_tmp / "x.jsonl")]
        paths = [str(kept), str(data_dir / "runs.sqlite"), str(data_dir), str(link), "/etc/passwd",
                 "../" * 8 + "etc/passwd", os.path.relpath(kept, Path(app.__file__).parent), "owners/x",
                 f"{kept.parent.name}/{kept.name}", *cached]

        attacker = client_for(served.url)
        answers = _probe_texts(attacker, alice_run, paths)
        # (the run id comes back only inside the refusal that quotes the attacker's own argument)
        leaked = [a for a in answers if SECRET_TEXT in a or "alice-private-name" in a or "root:x:0:0" in a
                  or (alice_run in a and "is not in the list of choices" not in a)]
        assert leaked == [], leaked
        assert len(answers) > 40

        for path in (kept, data_dir / "runs.sqlite"):  # Gradio's file route does not serve the data folder
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{served.url}gradio_api/file={path}")
            assert refused.value.code in (403, 404)

        # the attacker's "delete my data" deleted only the attacker's: alice's run is still hers
        assert alice.predict(api_name="/list_runs")["choices"][0][1] == alice_run
    finally:
        served.stop()


def test_on_a_space_a_visitor_cannot_reach_the_spaces_own_network_and_off_it_localhost_judges(fake_process,
                                                                                              tmp_path):
    from backtrans.egress import REFUSAL
    from tests.test_egress import LOOPBACK_SPELLINGS

    internal = fake_process()  # a service on the Space's loopback that no visitor should reach
    for folder in ("space", "local"):
        (tmp_path / folder).mkdir()
    served = AppServer(tmp_path / "space", {"SPACE_ID": "team/backtrans", "BACKTRANS_OAUTH": "0"})
    try:
        visitor = client_for(served.url)
        visitor.predict(api_name="/load_sample")
        connections = internal.stats()["connections"]  # this look counts itself
        for spelling in LOOPBACK_SPELLINGS:
            status = visitor.predict(**{**JUDGE, "backend": "custom", "base_url": spelling.format(port=internal.port)},
                                     api_name="/judge")[-1]
            assert status == f"**Cannot start.** {REFUSAL}", (spelling, status)
        # a file "upload" that is a URL into the Space's network: Gradio fetches those through safehttpx
        inner = f"http://127.0.0.1:{internal.port}/v1/rows.jsonl"
        assert "error" in raw_call(served.url, "inspect_upload",
                                   [{"path": inner, "url": inner, "meta": {"_type": "gradio.FileData"}}])
        stats = internal.stats()
        assert stats["requests"] == 0 and stats["connections"] == connections + 1
    finally:
        served.stop()
    served = AppServer(tmp_path / "local", {"BACKTRANS_OAUTH": "0"})  # a local user's own server on localhost
    try:
        visitor = client_for(served.url)
        visitor.predict(api_name="/load_sample")
        status = visitor.predict(**{**JUDGE, "backend": "custom", "base_url": f"http://localhost:{internal.port}/v1"},
                                 api_name="/judge")[-1]
        assert "**Done:** 30 rows" in status and internal.stats()["requests"] == 30
    finally:
        served.stop()


# --- sign-in -----------------------------------------------------------------------------------------------


class FakeHub(LoopbackServer):
    """The Hub's /api/whoami-v2, which Gradio's mocked sign-in asks once at start: real HTTP on loopback."""

    def __init__(self, username: str):
        body = json.dumps({"type": "user", "name": username, "fullname": username.title(), "avatarUrl": "",
                           "orgs": [], "auth": {}}).encode()

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                self.send_response(200 if self.path.startswith("/api/whoami") else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def _answer(client, **kwargs) -> str:
    try:
        return json.dumps(client.predict(**kwargs))
    except Exception as exc:  # noqa: BLE001 (Gradio refuses a run id that is not among the caller's own)
        return f"{type(exc).__name__}: {exc}"


def _signed_in_cookie(url: str) -> str:
    """Follow Gradio's sign-in redirects by hand: its session cookie is `Secure`, which http clients keep off
    plain-http loopback, so the header is read and replayed as a browser on localhost would."""
    import http.client
    import urllib.parse

    target = urllib.parse.urlsplit(url)
    path, cookie = "/login/huggingface", ""
    for _ in range(5):
        connection = http.client.HTTPConnection(target.hostname, target.port)
        connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        for header, value in response.getheaders():
            if header.lower() == "set-cookie" and value.startswith("session="):
                cookie = value.split(";")[0]
        location = response.getheader("Location")
        connection.close()
        if response.status not in (302, 303, 307) or not location:
            break
        path = urllib.parse.urlsplit(location).path + ("?" + urllib.parse.urlsplit(location).query
                                                        if urllib.parse.urlsplit(location).query else "")
    assert cookie, "the mocked sign-in set no session cookie"
    return cookie


def test_signed_in_users_are_isolated_and_judge_with_their_own_token(fake_process, tmp_path):
    server = fake_process()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    hubs = {name: FakeHub(name) for name in ("alice", "bob")}
    apps = {}
    try:
        for name, hub in hubs.items():  # two app processes on one data folder: one signed-in user each
            apps[name] = AppServer(data_dir, {
                "BACKTRANS_HF_ROUTER_URL": server.url, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_machine_token_123",
                "HF_HUB_OFFLINE": "0", "OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m",
                "BACKTRANS_SHARE_SERVER_KEY": "0"})
        alice = client_for(apps["alice"].url, headers={"Cookie": _signed_in_cookie(apps["alice"].url)})
        src = write_jsonl(tmp_path / "alice.jsonl", [{"instruction": f"{SECRET_TEXT} {i}", "generation": "a"}
                                                     for i in range(4)])
        upload(alice, src)
        refused = alice.predict(**JUDGE, api_name="/judge")[-1]
        assert "does not lend" in refused  # the owner has not opted in to pay for visitors
        status = alice.predict(**{**JUDGE, "backend": "huggingface"}, api_name="/judge")[-1]
        assert "**Done:** 4 rows" in status
        assert server.stats()["api_keys"] == {"mock-oauth-token-for-local-dev": 4}  # her token paid
        run_id = alice.predict(api_name="/list_runs")["choices"][0][1]

        again = client_for(apps["alice"].url, headers={"Cookie": _signed_in_cookie(apps["alice"].url)})
        assert again.predict(api_name="/list_runs")["choices"][0][1] == run_id  # a reload finds her runs

        bob = client_for(apps["bob"].url, headers={"Cookie": _signed_in_cookie(apps["bob"].url)})
        assert bob.predict(api_name="/list_runs")["choices"] == []
        made_up = "20260101-000000-000000000000"
        theirs, invented = (_answer(bob, run_id=rid, api_name="/resume_run") for rid in (run_id, made_up))
        assert theirs.replace(run_id, "ID") == invented.replace(made_up, "ID") and SECRET_TEXT not in theirs
        anonymous = client_for(apps["alice"].url)  # the same app, not signed in
        assert anonymous.predict(api_name="/list_runs")["choices"] == []
        assert "Sign in" in anonymous.predict(**{**JUDGE, "backend": "huggingface"}, api_name="/judge")[-1]
    finally:
        for served in apps.values():
            served.stop()
        for hub in hubs.values():
            hub.stop()
    logs = "".join((data_dir / "app.log").read_text(errors="replace") for _ in [0])
    assert "mock-oauth-token-for-local-dev" not in logs and "hf_machine_token_123" not in logs


def test_a_record_renders_inert_every_dataset_and_model_text_escaped():
    page = app.render_record({"row": 1, "instruction": "<b>x</b>", "generation": "<script>1</script>",
                              "reason": "fish & chips", "raw_output": "<i>raw</i>", "score": 3, "status": "ok"})
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "&lt;script&gt;" in page
    assert "fish &amp; chips" in page and "&lt;i&gt;raw&lt;/i&gt;" in page and "<i>" not in page


def _sample_session(tmp_path):
    from backtrans.workspace import Workspace

    session = Workspace(tmp_path / "w").session(app.owner_for(None, None))
    session.load_sample()
    for index in range(len(session.workbench)):
        score = 1 + index % 5
        session.workbench.set_result(index, {"score": score, "expected_score": score - 0.45 + (index % 3) * 0.1,
                                             "reason": "r " * 150, "status": "ok"})
    return session


def test_the_review_page_shortens_texts_and_its_green_bars_count_the_kept_pairs(tmp_path):
    session = _sample_session(tmp_path)
    session.set_keep_by("expected_score")
    for threshold in (3.8, 3.5, 4.0, 2.25):
        table, info, plot, summary = app.render_review(session.review(app.Filters(), threshold))
        kept = int(plot.loc[plot["side"] == "kept", "pairs"].sum())
        assert f"kept at ≥{threshold:g}: **{kept}** of 30" in summary, (threshold, summary)
        assert table["headers"][:4] == ["row", "verdict", "judge", "score"] and "expected score" in table["headers"]
        reasons = [row[table["headers"].index("reason")] for row in table["data"]]
        assert max(map(len, reasons)) == app.PREVIEW_CHARS + 1 and info.startswith("Page 1 of 1")


def test_many_visitors_at_once_each_finish_with_their_own_rows(fake_process, tmp_path):
    # The fast version of bench/visitors.py: 16 visitors at once, each with a file of its own.
    server = fake_process("--latency", "0.1")
    served = AppServer(tmp_path, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    results: dict[int, tuple] = {}

    def visit(number: int) -> None:
        client = client_for(served.url)
        path = write_jsonl(tmp_path / f"visitor-{number}.jsonl", [
            {"instruction": f"VISITOR-{number} question {i}?", "generation": f"answer {i}"} for i in range(20)])
        upload(client, path)
        results[number] = client.predict(**JUDGE, api_name="/judge")

    try:
        threads = [threading.Thread(target=visit, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        served.stop()
    assert sorted(results) == list(range(16))
    for number, (table, *_, status) in results.items():
        assert "**Done:** 20 rows" in status, status
        texts = json.dumps(table["data"])
        assert texts.count(f"VISITOR-{number} ") == 20 and "VISITOR-" not in texts.replace(f"VISITOR-{number} ", "")
    assert server.stats()["requests"] == 16 * 20  # every row asked once


def test_an_upload_is_not_held_behind_more_running_jobs_than_gradios_forty_slots(fake_process, tmp_path):
    # A page following its job holds one of Gradio's event slots for the job's length: with its default of 40,
    # the 41st visitor's judge and every later upload waited until some job ended.
    server = fake_process("--latency", "120")
    served = AppServer(tmp_path, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    try:
        def start(number: int) -> None:
            client = client_for(served.url)
            upload(client, write_jsonl(tmp_path / f"stalled-{number}.jsonl", [{"instruction": "q", "generation": "a"}]))
            client.submit(**JUDGE, api_name="/judge")  # followed by its page until the app stops

        starters = [threading.Thread(target=start, args=(n,)) for n in range(41)]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join(timeout=120)
        local.wait_until(lambda: server.stats()["requests"] >= 41, 60, "all 41 jobs to ask the stalled server")
        loaded: list[tuple] = []
        late = threading.Thread(target=lambda: loaded.append(upload(
            client_for(served.url), write_jsonl(tmp_path / "late.jsonl", [{"instruction": "x?", "generation": "y"}]))))
        late.start()
        late.join(timeout=60)
        assert loaded and "Loaded **1** pairs" in loaded[0][1], loaded
        assert server.stats()["requests"] == 41  # every job still waiting for its reply: none ended to make room
    finally:
        served.stop()


def test_the_histograms_green_bars_add_up_to_the_kept_count_the_summary_gives(fake_process, tmp_path):
    # Once a bin that straddled the threshold was coloured as one side: 10 kept, one green bar of 1.
    server = fake_process("--latency", "0.01")
    served = AppServer(tmp_path, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    try:
        client = client_for(served.url)
        client.predict(api_name="/load_sample")
        for threshold in (3.8, 3.6, 2.3):
            *_, plot, summary, status = client.predict(**{**JUDGE, "template_name": "humpback-short",
                                                          "threshold": threshold}, api_name="/judge")
            green = sum(pairs for _, pairs, side in plot["data"] if side == "kept")
            grey = sum(pairs for _, pairs, side in plot["data"] if side == "discarded")
            assert f"kept at ≥{threshold:g}: **{green}** of 30" in summary and green + grey == 30, summary
            assert "Keep by: **expected score**" in summary and "**Done:** 30 rows" in status
            assert all(pairs == 0 for bin_, pairs, side in plot["data"] if side == "kept" and float(bin_) < threshold)
    finally:
        served.stop()


def test_a_lean_session_gives_a_deep_link_the_same_components_as_gradio_s_own(tmp_path):
    """app._LeanSessionState defers Gradio's per-session block configs; through the same events (inputs, plain
    outputs, updates that change a prop and a value, a State) a deep link must read exactly what Gradio's
    SessionState gives."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    with gr.Blocks() as demo:
        state = gr.State(0)
        text = gr.Textbox("start")
        choice = gr.Dropdown(["a", "b"], value="a")
        shown = gr.Markdown("nothing")
        untouched = gr.Number(7)

        def plain(value, count):
            return value.upper(), count + 1

        def update(value):
            return gr.update(choices=["a", "b", value], value=value), gr.update(visible=False)

        plain_event = text.submit(plain, [text, state], [shown, state])
        update_event = text.change(update, text, [choice, shown])
    functions = {fn.name: fn for fn in demo.fns.values()}

    async def drive(session) -> dict:
        await demo.process_api(functions["plain"], ["hello", None], state=session)
        await demo.process_api(functions["update"], ["c"], state=session)
        await demo.process_api(functions["plain"], ["again", None], state=session)
        # Gradio files a changed output under the id of the block it made for the change: the ids of those
        # differ between two runs, so the components are compared in order, keyed by the page's own ids.
        return {config["id"] if config["id"] in demo.blocks else f"made {n}": config
                for n, config in enumerate(session.components)}

    gradio_s = asyncio.run(drive(SessionState(demo)))
    lean = asyncio.run(drive(app._LeanSessionState(demo)))
    made = [key for key in lean if isinstance(key, str)]
    assert made and made == [key for key in gradio_s if isinstance(key, str)]
    for key in made:
        gradio_s[key].pop("id"), lean[key].pop("id")
    assert lean == gradio_s
    assert lean[choice._id]["props"]["value"] == "c" and "c" in str(lean[choice._id]["props"]["choices"])
    assert [lean[key]["props"].get("value") for key in made] == ["AGAIN"]  # the Markdown after its update
    assert lean[untouched._id]["props"]["value"] == 7 and lean[state._id]["type"] == "state"
    assert plain_event and update_event


def test_lean_blocks_send_the_page_what_gradio_sends_for_skipped_and_changed_outputs():
    """app._LeanBlocks processes only the outputs an event changed; the page must receive the same data as from
    gr.Blocks, for skips mixed with values, updates and a whole-table value."""
    import asyncio

    import gradio as gr
    import pandas as pd

    def build(kind):
        with kind() as demo:
            text = gr.Textbox()
            table = gr.Dataframe(pd.DataFrame({"a": [1]}))
            note = gr.Markdown()
            button = gr.Button()
            kept = gr.State("first")

            def mixed(value):
                return gr.skip(), f"**{value}**", gr.skip(), gr.update(interactive=False), gr.skip()

            def table_only(value):
                return pd.DataFrame({"a": [len(value)], "b": [value]}), gr.skip(), gr.skip(), gr.skip(), value

            def nothing(value):
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()

            for fn in (mixed, table_only, nothing):
                text.submit(fn, text, [table, note, text, button, kept])
        return demo

    async def outputs(demo) -> list:
        from gradio.state_holder import SessionState

        state = SessionState(demo)
        results = []
        for fn in demo.fns.values():
            result = await demo.process_api(fn, ["<b>x</b>"], state=state)
            results.append(result["data"])
        kept = next(block for block in demo.blocks.values() if isinstance(block, gr.State))
        return [*results, state[kept._id]]

    gradio_s, lean = asyncio.run(outputs(build(gr.Blocks))), asyncio.run(outputs(build(app._LeanBlocks)))
    assert lean == gradio_s
    assert lean[0][1] == "**<b>x</b>**" and lean[0][3]["interactive"] is False
    assert lean[1][0]["data"] == [[len("<b>x</b>"), "<b>x</b>"]] and lean[2] == [{"__type__": "update"}] * 4 + [None]
    assert lean[-1] == "<b>x</b>"  # the State the second event set, kept through the third's skip
