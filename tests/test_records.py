import json
import os

import pandas as pd
import pytest

from backtrans.records import SAMPLE_PATH, RecordsError, load_records, parse_mapping, preview_columns, validate
from tests.conftest import LoopbackServer, QuietHandler, write_jsonl


def _error(path, **kwargs) -> str:
    with pytest.raises(RecordsError) as info:
        validate(path, **kwargs)
    return str(info.value)


def test_sample_data_ships_and_is_valid():
    frame = load_records(SAMPLE_PATH)
    assert len(frame) >= 24
    assert {"instruction", "generation", "id"} <= set(frame.columns)


def test_jsonl_csv_parquet_load_the_same_rows(tmp_path):
    rows = [{"instruction": f"q{i}", "generation": f"a,\n{i}", "n": i} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    frames = [load_records(tmp_path / name) for name in ("a.jsonl", "a.csv", "a.parquet")]
    for frame in frames:
        assert list(frame["instruction"]) == [f"q{i}" for i in range(5)]
        assert list(frame["generation"]) == [f"a,\n{i}" for i in range(5)]


def test_aliases_and_explicit_mapping(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "response": "a"}])
    assert load_records(tmp_path / "p.jsonl").iloc[0].to_dict() == {"instruction": "q", "generation": "a"}
    write_jsonl(tmp_path / "m.jsonl", [{"ask": "q", "reply": "a"}])
    frame = load_records(tmp_path / "m.jsonl", ["ask=instruction", "reply=generation"])
    assert frame.iloc[0].to_dict() == {"instruction": "q", "generation": "a"}
    assert parse_mapping(["prompt=instruction"]) == {"prompt": "instruction"}
    with pytest.raises(RecordsError, match="SOURCE=TARGET"):
        parse_mapping(["nonsense"])


def test_hf_dataset_saved_to_disk_and_as_a_data_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"question": ["q1", "q2"], "answer": ["a1", "a2"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "saved"))
    assert list(load_records(tmp_path / "saved")["instruction"]) == ["q1", "q2"]
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "q", "completion": "a"}])
    frame = load_records(str(folder), split="train")
    assert frame.iloc[0]["generation"] == "a"


def test_hub_id_that_cannot_be_reached_is_a_clear_error():
    message = _error("nobody/no-such-dataset-xyz", split="train")
    assert "nobody/no-such-dataset-xyz" in message and "Traceback" not in message


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    assert _error(tmp_path / "e.jsonl") == "e.jsonl: the file is empty"


def test_header_only_csv(tmp_path):
    (tmp_path / "h.csv").write_text("instruction,generation\n")
    assert "no rows" in _error(tmp_path / "h.csv")


def test_missing_column_names_line_and_columns(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"instruction": "q", "answr": "a"}])
    with pytest.raises(RecordsError) as info:
        validate(tmp_path / "m.jsonl")
    # The core names what is missing and what is there; how to map a column is each face's own hint.
    assert str(info.value) == "m.jsonl:1: missing column 'generation' (found: instruction, answr)"
    assert info.value.missing_columns == ("generation",)
    assert info.value.found_columns == ("instruction", "answr")


def test_broken_json_line_names_line_and_column(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"instruction": "q", "generation": "a"}\n{"instruction": "q2", "generation": "a2",}\n')
    assert _error(path).startswith("b.jsonl:2:42: invalid JSON")


def test_non_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("instruction,generation\nq,ok\ncaf\u00e9,x\n".encode("latin-1"))
    message = _error(path)
    assert message.startswith("l.csv:3:4: not valid UTF-8")
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes('{"instruction": "q", "generation": "a"}\n'.encode("utf-16"))
    assert "UTF-16" in _error(utf16)


def test_binary_data(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    assert "bin.jsonl:" in _error(path)


@pytest.mark.parametrize("bad", [None, "", "   ", float("nan")])
def test_nan_or_empty_text(tmp_path, bad):
    write_jsonl(tmp_path / "n.jsonl", [{"instruction": "q", "generation": "a"}, {"instruction": "q2"}])
    assert _error(tmp_path / "n.jsonl") == "n.jsonl:2: column 'generation' is missing"
    frame = pd.DataFrame({"instruction": ["q", "q2"], "generation": ["a", bad]})
    frame.to_csv(tmp_path / "n.csv", index=False)
    assert _error(tmp_path / "n.csv") == "n.csv:3: column 'generation' is empty"


def test_duplicate_rows_name_both_lines_and_can_be_dropped(tmp_path):
    rows = [{"instruction": "q", "generation": "a"}, {"instruction": "x", "generation": "y"}] * 2
    write_jsonl(tmp_path / "d.jsonl", rows)
    assert _error(tmp_path / "d.jsonl").startswith("d.jsonl:3: duplicate of d.jsonl:1")
    assert validate(tmp_path / "d.jsonl", drop_duplicates=True) == 2


def test_csv_with_embedded_newlines_reports_physical_lines(tmp_path):
    path = tmp_path / "nl.csv"
    path.write_text('instruction,generation\n"q1","line one\nline two\nline three"\n"q2",""\n')
    assert _error(path) == "nl.csv:5: column 'generation' is empty"
    path.write_text('instruction,generation\n"q1","a"\n"q2","unterminated\n')
    assert "nl.csv:3" in _error(path)


def test_csv_field_count_mismatch(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("instruction,generation\nq,a,extra\n")
    assert _error(path).startswith("f.csv:2: 3 fields where the header has 2")


def test_huge_field_is_refused_with_its_size(tmp_path):
    write_jsonl(tmp_path / "big.jsonl", [{"instruction": "q", "generation": "x" * 2_000_000}])
    assert "2,000,000 characters" in _error(tmp_path / "big.jsonl")


def test_non_text_values(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"instruction": "q", "generation": {"a": 1}}])
    assert "should be text" in _error(tmp_path / "t.jsonl")
    write_jsonl(tmp_path / "num.jsonl", [{"instruction": 42, "generation": "a"}])
    assert load_records(tmp_path / "num.jsonl").iloc[0]["instruction"] == "42"


def test_json_array_file(tmp_path):
    (tmp_path / "arr.json").write_text(json.dumps([{"instruction": "q", "generation": "a"}]))
    assert len(load_records(tmp_path / "arr.json")) == 1


def test_preview_shows_raw_columns_before_mapping(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"ask": "q", "reply": "a"}])
    assert list(preview_columns(tmp_path / "p.jsonl").columns) == ["ask", "reply"]


# --- a Hub dataset whose card points outside its repository ---------------------------------------------------


class FakeHubDatasets(LoopbackServer):
    """Enough of the Hub's dataset API for `datasets.load_dataset(OWNER/NAME)`: info, tree, paths-info, resolve.

    `repos` maps a repo id to its files (path -> bytes). Real HTTP on loopback."""

    SHA = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        import hashlib
        import urllib.parse

        sha = self.SHA

        class Handler(QuietHandler):
            def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _entries(self, files: dict[str, bytes], folder: str) -> list[dict]:
                prefix = f"{folder}/" if folder else ""
                entries: dict[str, dict] = {}
                for path, data in files.items():
                    if path.startswith(prefix):
                        head, _, rest = path[len(prefix):].partition("/")
                        entries[prefix + head] = ({"type": "directory", "path": prefix + head, "oid": "0" * 40}
                                                  if rest else {"type": "file", "path": path, "size": len(data),
                                                                "oid": hashlib.sha1(data).hexdigest()})
                return list(entries.values())

            def do_GET(self):  # noqa: N802 (the stdlib's names)
                path = urllib.parse.unquote(self.path.split("?")[0])
                for repo, files in repos.items():
                    api, resolve = f"/api/datasets/{repo}", f"/datasets/{repo}/resolve/"
                    if path.startswith(f"{api}/tree/"):
                        folder = path[len(f"{api}/tree/"):].partition("/")[2].strip("/")
                        return self._send(200, json.dumps(self._entries(files, folder)).encode())
                    if path.startswith(f"{api}/paths-info/"):
                        return self._send(200, json.dumps([e for e in self._entries(files, "")]).encode())
                    if path == api or path.startswith(f"{api}/revision/"):
                        info = {"id": repo, "sha": sha, "private": False, "tags": [], "downloads": 0, "likes": 0,
                                "lastModified": "2026-01-01T00:00:00.000Z",
                                "siblings": [{"rfilename": name} for name in files]}
                        return self._send(200, json.dumps(info).encode())
                    if path.startswith(resolve):
                        name = path[len(resolve):].partition("/")[2]
                        if name in files:
                            return self._send(200, files[name], {"X-Repo-Commit": sha,
                                                                 "ETag": f'"{hashlib.sha1(files[name]).hexdigest()}"'})
                        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

            do_HEAD = do_POST = do_GET

        super().__init__(Handler)


def _card(configs: str) -> bytes:
    return f"---\nconfigs:\n{configs}---\n# a dataset\n".encode()


@pytest.mark.slow  # a subprocess that imports datasets: ~5 s
def test_a_hub_dataset_card_that_names_files_outside_its_repo_is_refused_before_any_request(fake_llm, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    internal = f"127.0.0.1:{fake_llm.port}"  # a service on the Space's own network, counting connections
    local_secret = write_jsonl(tmp_path / "secret.jsonl", [{"instruction": "SERVER-FILE", "generation": "x"}])
    data = {"data/train.csv": b"instruction,generation\nq1,a1\nq2,a2\n"}
    repos = {
        "someone/fine": {"README.md": _card('- config_name: default\n  data_files: "data/*.csv"\n'), **data},
        "attacker/url": {"README.md": _card(f'- config_name: default\n  data_files: "http://{internal}/v1/x.csv"\n')},
        "attacker/listed": {"README.md": _card("- config_name: default\n  data_files:\n  - split: train\n    path:\n"
                                               f'    - "data/*.csv"\n    - "https://{internal}/x.csv"\n'), **data},
        "attacker/dir": {"README.md": _card(f'- config_name: default\n  data_dir: "http://{internal}/v1"\n')},
        "attacker/hop": {"README.md": _card(f'- config_name: default\n  data_files: "zip://*.csv::http://{internal}/a.zip"\n')},
        "attacker/local": {"README.md": _card(f'- config_name: default\n  data_files: "{local_secret}"\n')},
        "attacker/walk": {"README.md": _card('- config_name: default\n  data_files: "../../../../tmp/*.jsonl"\n')},
        "attacker/yaml": {"README.md": b"# no card data\n", **data,
                          ".huggingface.yaml": f'configs:\n- config_name: default\n  data_files: "http://{internal}/y.csv"\n'.encode()},
    }
    hub = FakeHubDatasets(repos)
    script = ("import json, sys\nfrom backtrans.records import RecordsError, load_records\n"
              "for repo in sys.argv[1:]:\n"
              "    try:\n        print(json.dumps([repo, len(load_records(repo, split='train'))]))\n"
              "    except RecordsError as exc:\n        print(json.dumps([repo, str(exc)]))\n")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", script, *repos], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        hub.stop()
    answers = dict(json.loads(line) for line in done.stdout.splitlines() if line.startswith("["))
    assert answers.pop("someone/fine") == 2, done.stderr[-2000:]  # a card that names its own files loads
    assert set(answers) == set(repos) - {"someone/fine"}, done.stderr[-2000:]
    for repo, answer in answers.items():
        assert answer == (f"{repo}: its dataset card names data files outside its own repository; only a dataset's "
                          "own files are loaded"), (repo, answer)
    assert fake_llm.connections == 0
