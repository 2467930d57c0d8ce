"""The Hub, without a network: a real Hugging Face cache on disk, read offline by `hf://` and `colm pull`,
and `colm push` with only its requests replaced by a recording fake."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import ModelCard, constants, scan_cache_dir, try_to_load_from_cache

from colm_core import hub
from colm_core.checkpoint import open_checkpoint, save
from colm_core.errors import ColmError
from tests.conftest import assert_one_line_error, colm_in_subprocess, tiny_model

REPO_ID = "colm-test/tiny"
MAIN_COMMIT = "1" * 40
V1_COMMIT = "2" * 40


def cache_snapshot(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs: list[str]) -> Path:
    """Write a repo revision in huggingface_hub's cache layout: models--ORG--NAME/{blobs,refs,snapshots}.

    Blobs are named by their etag as the Hub serves it: sha256 for LFS files (weights), git's sha1 otherwise."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin", ".pth"))
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / etag).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo / "blobs" / etag, link.parent), link)
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def checkpoint_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A cache holding colm-test/tiny: main is a 3-chain model (plus files colm must not fetch), v1 a 2-chain one."""
    tmp = tmp_path_factory.mktemp("hub")
    main = save(tiny_model(seed=0), tmp / "main-ckpt")
    v1 = save(tiny_model(seed=1, heads=[2, 2], kv_heads=[1, 1], ffn=[16, 16], vocab_size=258), tmp / "v1-ckpt")
    cache = tmp / "cache"
    stray = {"original/consolidated.00.pth": b"not for colm", "training_args.bin": b"pickle"}
    main_snapshot = cache_snapshot(cache, REPO_ID, {**checkpoint_bytes(main), **stray}, MAIN_COMMIT, ["main"])
    v1_snapshot = cache_snapshot(cache, REPO_ID, checkpoint_bytes(v1), V1_COMMIT, ["v1"])

    # The layout is the one huggingface_hub reads: its own cache scanner and lookup find both revisions.
    [repo] = scan_cache_dir(cache).repos
    assert repo.repo_id == REPO_ID and {r.commit_hash: set(r.refs) for r in repo.revisions} == {
        MAIN_COMMIT: {"main"},
        V1_COMMIT: {"v1"},
    }
    assert try_to_load_from_cache(REPO_ID, "config.json", cache_dir=cache, revision="v1") == str(
        v1_snapshot / "config.json"
    )

    env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp / "hf-home"), "HF_HUB_OFFLINE": "1"}
    return {"env": env, "main": main, "v1": v1, "main_snapshot": main_snapshot, "v1_snapshot": v1_snapshot}


def test_hf_references_resolve_from_the_cache_offline(hub_cache, tmp_path):
    env = hub_cache["env"]
    for ref, snapshot, chains in [
        (f"hf://{REPO_ID}", hub_cache["main_snapshot"], 3),
        (f"hf://{REPO_ID}@v1", hub_cache["v1_snapshot"], 2),
    ]:
        report = json.loads(colm_in_subprocess("inspect", "--json", ref, env=env, check=True).stdout)
        assert report["path"] == str(snapshot) and len(report["chains"]) == chains, ref

    # A commit as the revision, on stdin like a path: the pipe form every command accepts.
    data = tmp_path / "text.txt"
    data.write_text("Emma Woodhouse, handsome, clever, and rich. " * 4)
    ev = colm_in_subprocess(
        "eval",
        "--data",
        data,
        "--seq-len",
        "32",
        "--device",
        "cpu",
        input=f"hf://{REPO_ID}@{V1_COMMIT}\n",
        env=env,
        check=True,
    )
    report = json.loads(ev.stdout)
    assert report["checkpoint"] == str(hub_cache["v1_snapshot"]) and [r["chains"] for r in report["results"]] == [1, 2]


def test_pull_prints_the_cache_path_or_copies_only_checkpoint_files(hub_cache, tmp_path):
    env = hub_cache["env"]
    proc = colm_in_subprocess("pull", REPO_ID, env=env, check=True)
    assert proc.stdout == f"{hub_cache['main_snapshot']}\n"

    out = tmp_path / "pulled"
    proc = colm_in_subprocess("pull", REPO_ID, "--revision", "v1", "-o", out, env=env, check=True)
    assert proc.stdout == f"{out}\n"
    assert checkpoint_bytes(out) == checkpoint_bytes(hub_cache["v1"])
    assert not any(p.is_symlink() for p in out.iterdir())
    assert open_checkpoint(out).config.n_chains == 2

    assert_one_line_error(colm_in_subprocess("pull", REPO_ID, "-o", out, env=env), 2, "already exists")
    colm_in_subprocess("pull", f"hf://{REPO_ID}", "-o", out, "--force", env=env, check=True)
    # The Hub snapshot also holds a pickle and a subfolder: a copy takes only what a checkpoint is made of.
    assert checkpoint_bytes(out) == checkpoint_bytes(hub_cache["main"])
    assert sorted(p.name for p in out.iterdir()) == sorted(checkpoint_bytes(hub_cache["main"]))


def test_a_repo_or_revision_missing_from_the_cache_is_a_one_line_error(hub_cache):
    env = hub_cache["env"]
    assert_one_line_error(
        colm_in_subprocess("pull", "colm-test/absent", env=env), 2, "hf://colm-test/absent is not cached"
    )
    assert_one_line_error(
        colm_in_subprocess("pull", REPO_ID, "--revision", "v9", env=env), 2, f"hf://{REPO_ID}@v9 is not cached"
    )
    assert_one_line_error(colm_in_subprocess("inspect", f"hf://{REPO_ID}@v9", env=env), 2, "not cached")


@pytest.mark.parametrize(
    "reference",
    [
        "bad--id/x",
        "org/name.git",
        "org/-name",
        "just-a-name",
        "a/b/c",
        "hf://datasets/org/name",
        "hf://org/name@",
        "org/" + "n" * 100,
    ],
)
def test_invalid_repo_ids_are_refused_before_any_request(reference, monkeypatch):
    def no_requests(*args, **kwargs):
        raise AssertionError("a request was attempted")

    monkeypatch.setattr(hub, "snapshot_download", no_requests)
    with pytest.raises(ColmError):
        hub.pull(reference)
    fake = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(ColmError):
        hub.push(Path("unused"), reference, api=fake)
    assert fake.calls == []


def test_cli_refuses_an_invalid_id_even_online(tmp_path):
    # Online, with a Hub endpoint nobody answers: a request would fail with "cannot be reached" instead.
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    assert_one_line_error(colm_in_subprocess("pull", "bad--id/x", env=env), 2, "not a valid Hub model id")
    assert_one_line_error(
        colm_in_subprocess("inspect", "hf://org/name/config.json", env=env), 2, "give the repo itself"
    )


# --- online, against a local stand-in for the Hub's HTTP API --------------------------------


class FakeHubServer(BaseHTTPRequestHandler):
    """Answers the three requests a download makes: repo info, the tree listing, and the files."""

    repo_id, commit, files, requested = "", "", {}, []

    def log_message(self, *args):
        pass

    def reply(self, code: int, body: bytes, **headers):
        self.send_response(code)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path, repo, files = unquote(urlsplit(self.path).path), self.repo_id, self.files
        resolve = f"/{repo}/resolve/{self.commit}/"
        if path in (f"/api/models/{repo}", f"/api/models/{repo}/revision/main"):
            self.reply(200, json.dumps({"id": repo, "sha": self.commit}).encode(), Content_Type="application/json")
        elif path.startswith(f"/api/models/{repo}/revision/"):
            self.reply(404, b"{}", X_Error_Code="RevisionNotFound", Content_Type="application/json")
        elif path == f"/api/models/{repo}/tree/{self.commit}":
            tree = [
                {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for f, d in files.items()
            ]
            self.reply(200, json.dumps(tree).encode(), Content_Type="application/json")
        elif path.startswith(resolve) and path[len(resolve) :] in files:
            data = files[path[len(resolve) :]]
            if self.command == "GET":
                self.requested.append(path[len(resolve) :])
            self.reply(200, data, X_Repo_Commit=self.commit, ETag=f'"{hashlib.sha1(data).hexdigest()}"')
        else:
            self.reply(404, b"{}", X_Error_Code="RepoNotFound", Content_Type="application/json")

    do_HEAD = do_GET


def test_online_pull_downloads_only_checkpoint_files_then_works_offline(hub_cache, tmp_path):
    files = {
        **checkpoint_bytes(hub_cache["v1"]),
        "original/consolidated.00.pth": b"pickle",
        "pytorch_model.bin": b"pickle",
        "notes/eval.txt": b"x",
    }
    handler = type(
        "Served", (FakeHubServer,), {"repo_id": "acme/served", "commit": "4" * 40, "files": files, "requested": []}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_HOME": str(tmp_path / "home"),
            "HF_HUB_OFFLINE": "0",
        }
        snapshot = colm_in_subprocess("pull", "acme/served", env=env, check=True).stdout.strip()
        assert sorted(handler.requested) == sorted(checkpoint_bytes(hub_cache["v1"]))
        assert checkpoint_bytes(Path(snapshot)) == checkpoint_bytes(hub_cache["v1"])
        assert_one_line_error(
            colm_in_subprocess("pull", "acme/served", "--revision", "nope", env=env), 2, "no revision 'nope'"
        )
        assert_one_line_error(colm_in_subprocess("pull", "acme/other", env=env), 2, "no such model repo")
        handler.requested.clear()
        report = json.loads(
            colm_in_subprocess(
                "inspect", "--json", "hf://acme/served", env={**env, "HF_HUB_OFFLINE": "1"}, check=True
            ).stdout
        )
        assert report["path"] == snapshot and len(report["chains"]) == 2 and handler.requested == []
    finally:
        server.shutdown()


# --- push ------------------------------------------------------------------------------------


class FakeHub:
    """Stands in for HfApi's requests: records each call and what the upload would send."""

    def __init__(self):
        self.calls = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        self.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return type("CommitInfo", (), {"oid": "c" * 40})()


def test_push_uploads_the_checkpoint_and_a_fresh_card_without_touching_the_input(tmp_path, monkeypatch):
    model = tiny_model(kv_share=True, kv_heads=[2, 0, 0])
    source = "/home/u/.cache/huggingface/hub/models--acme--base-colm/snapshots/" + "d" * 40
    model.history = [
        {
            "command": "expand",
            "args": {"chains": "2,2,2"},
            "inputs": [{"path": source}],
            "time": "2026-01-01T00:00:00+00:00",
        }
    ]
    ckpt = save(model, tmp_path / "ckpt", max_shard_bytes=40_000)
    (ckpt / "README.md").write_text("an old card\n")
    (ckpt / "notes.txt").write_text("not part of the checkpoint\n")
    (ckpt / "optimizer.safetensors").write_bytes(b"neither")
    before = checkpoint_bytes(ckpt)
    monkeypatch.setenv("HF_TOKEN", "hf_test")

    fake = FakeHub()
    uri = hub.push(ckpt, "acme/grown", private=True, revision="experiment", license="apache-2.0", api=fake)

    assert uri == f"hf://acme/grown@{'c' * 40}"
    assert [c[0] for c in fake.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert fake.calls[0][2] == {"private": True, "exist_ok": True}
    assert fake.calls[1][2]["branch"] == "experiment" and fake.calls[2][2]["revision"] == "experiment"
    # Shards left in the repo by an earlier, differently sharded push are deleted in the same commit.
    assert "*.safetensors" in fake.calls[2][2]["delete_patterns"]

    shards = sorted(set(open_checkpoint(ckpt).weight_map.values()))
    assert len(shards) > 1
    expected = {
        "config.json",
        "colm_history.json",
        "model.safetensors.index.json",
        "README.md",
        "digests.json",
        *shards,
    }
    assert set(fake.uploaded) == expected
    assert all(fake.uploaded[name] == before[name] for name in expected - {"README.md"})

    card = ModelCard(fake.uploaded["README.md"].decode())
    assert card.data.library_name == "colm" and card.data.license == "apache-2.0"
    assert card.data.tags == ["colm", "chain-of-model", "colm-air"] and card.data.base_model == "acme/base-colm"
    assert checkpoint_bytes(ckpt) == before


def test_push_needs_a_token_and_the_network_and_asks_nothing_first(tmp_path, monkeypatch):
    ckpt = save(tiny_model(), tmp_path / "ckpt")
    # No token anywhere huggingface_hub looks: an empty HF_HOME and no HF_TOKEN. No flag can supply one.
    env = {
        "HF_HOME": str(tmp_path / "home"),
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    assert_one_line_error(colm_in_subprocess("push", ckpt, "acme/x", env=env), 2, "no Hugging Face token: set HF_TOKEN")
    assert_one_line_error(colm_in_subprocess("push", ckpt, "acme/x", "--token", "hf_x", env=env), 2, "--token")

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ColmError, match="HF_HUB_OFFLINE"):
        hub.push(ckpt, "acme/x", api=fake)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    (ckpt / "config.json").unlink()
    with pytest.raises(ColmError, match="no config.json"):
        hub.push(ckpt, "acme/x", api=fake)
    assert fake.calls == []


def test_push_reads_the_checkpoint_from_stdin_with_one_argument(tmp_path):
    ckpt = save(tiny_model(), tmp_path / "ckpt")
    env = {"HF_HOME": str(tmp_path / "home"), "HF_TOKEN": "", "HF_HUB_OFFLINE": "1"}
    # Offline push is refused after the checkpoint came from stdin and the id was checked.
    assert_one_line_error(colm_in_subprocess("push", "acme/x", input=f"{ckpt}\n", env=env), 2, "HF_HUB_OFFLINE")
    assert_one_line_error(
        colm_in_subprocess("push", "acme--x", input=f"{ckpt}\n", env=env), 2, "not a valid Hub model id"
    )


def test_python_load_resolves_hf_references_like_the_commands(hub_cache):
    script = (
        "import colm_core\n"
        f"model = colm_core.load('hf://{REPO_ID}@v1')\n"
        "print(model.config.n_chains, model.training)\n"
        "try:\n"
        "    colm_core.load('hf://colm-test/absent')\n"
        "except colm_core.errors.ColmError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, **hub_cache["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    loaded, error = proc.stdout.splitlines()
    assert loaded == "2 False"  # the v1 revision's 2 chains, in eval mode
    assert error.startswith("hf://colm-test/absent is not cached")


def test_pull_copies_config_json_last(hub_cache, tmp_path, monkeypatch):
    """A copy killed part-way must not look like a checkpoint: config.json, which makes a directory one, comes
    last, and whole (written beside and renamed into place by write_last_file)."""
    import shutil

    from colm_core import checkpoint, hub

    monkeypatch.setattr(hub, "download", lambda repo_id, revision: Path(hub_cache["main_snapshot"]))
    copied, copyfile, write_last_file = [], shutil.copyfile, checkpoint.write_last_file
    monkeypatch.setattr(shutil, "copyfile", lambda src, dst: (copied.append(Path(dst).name), copyfile(src, dst))[1])
    monkeypatch.setattr(
        checkpoint,
        "write_last_file",
        lambda path, data: (copied.append(f"whole {path.name}"), write_last_file(path, data))[1],
    )
    hub.pull(REPO_ID, output=tmp_path / "out")
    assert len(copied) > 3 and copied[-1] == "whole config.json"
    assert sorted(name.removeprefix("whole ") for name in copied) == sorted(
        p.name for p in (tmp_path / "out").iterdir()
    )
