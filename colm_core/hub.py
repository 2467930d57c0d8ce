"""The Hugging Face Hub: `colm pull`, `colm push` and `hf://ORG/NAME[@REVISION]` checkpoint references.

Downloads go through huggingface_hub into its shared cache (HF_HUB_CACHE, under HF_HOME), so they
resume after an interruption, are reused by other tools, and work offline: with HF_HUB_OFFLINE=1 a
cached repo resolves without any request. Only the files a checkpoint needs are fetched: a colm
checkpoint's, or a Llama `transformers` repo's (which resolve_checkpoint then imports).

Tokens come only from huggingface_hub's own sources (HF_TOKEN, the `hf auth login` cache): a token
flag would land in shell history.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects

from colm_core import __version__
from colm_core.card import model_card
from colm_core.errors import ColmError, ColmRuntimeError
from colm_core.references import parse_reference, reference_text
from colm_core.tokenizer import TOKENIZER_FILES

# Top-level files of a colm checkpoint or of a Llama `transformers` repo: nothing else is downloaded.
CHECKPOINT_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    *TOKENIZER_FILES,
    "generation_config.json",
    "colm_history.json",
    "README.md",
    "digests.json",
]
# Subfolders hold what colm never reads (e.g. a Llama repo's original/ pickled weights).
SUBFOLDER_PATTERNS = ["*/*"]


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot directory of a repo revision, downloading what the cache lacks (offline: cache only)."""
    ref = reference_text(repo_id, revision)
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=CHECKPOINT_PATTERNS,
                ignore_patterns=SUBFOLDER_PATTERNS,
                library_name="colm",
                library_version=__version__,
            )
        )
    except GatedRepoError:
        raise ColmError(
            f"{ref} is gated: accept its terms on huggingface.co, then log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ColmError(
            f"{ref}: no such model repo on the Hub, or it is private: check the id, "
            "or log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ColmError(f"{ref}: the repo has no revision {revision!r}; check the branch, tag or commit") from None
    except IncompleteSnapshotError:
        raise ColmError(
            f"{ref}: the cached copy is incomplete and the Hub cannot be reached; "
            f"rerun `colm pull {ref}` with network access"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub cannot be reached"
        raise ColmError(
            f"{ref} is not cached in {constants.HF_HUB_CACHE} and {why}; "
            f"run `colm pull {ref}` with network access first"
        ) from None
    except HfHubHTTPError as e:
        raise ColmRuntimeError(f"{ref}: the Hub refused the download: {str(e).splitlines()[0]}") from None


def resolve(reference: str) -> Path:
    """`hf://ORG/NAME[@REVISION]` -> its local snapshot directory."""
    return download(*parse_reference(reference))


def pull(reference: str, revision: str | None = None, output: Path | None = None, force: bool = False) -> Path:
    """Download a repo revision into the Hub cache; with `output`, also copy it there as plain files.

    Returns the snapshot directory in the cache, or `output`."""
    repo_id, revision = parse_reference(reference, revision)
    if output is None:
        return download(repo_id, revision)
    from colm_core.checkpoint import CONFIG_FILE, atomic_directory, write_last_file  # torch: only now

    with atomic_directory(output, force) as tmp:
        snapshot = download(repo_id, revision)
        names = [p.name for p in snapshot.iterdir() if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=CHECKPOINT_PATTERNS):
            if name != CONFIG_FILE:
                shutil.copyfile(snapshot / name, tmp / name)  # follows the cache's symlinks into its blobs
        if CONFIG_FILE in names:
            write_last_file(tmp / CONFIG_FILE, (snapshot / CONFIG_FILE).read_bytes())
    return Path(output)


def checkpoint_files(ckpt) -> list[Path]:
    """The files that make up a validated checkpoint, its model card aside."""
    from colm_core.checkpoint import CONFIG_FILE, DIGESTS_FILE, HISTORY_FILE, INDEX_FILE

    names = [CONFIG_FILE, INDEX_FILE, HISTORY_FILE, *TOKENIZER_FILES, DIGESTS_FILE]
    return [ckpt.path / n for n in names if (ckpt.path / n).is_file()] + ckpt.files


def push(
    path: Path,
    reference: str,
    *,
    private: bool = False,
    revision: str | None = None,
    license: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload a checkpoint with a freshly generated model card; returns `hf://ORG/NAME@COMMIT`.

    The input directory is never modified: the upload is staged as symlinks plus the new README.md.
    Checkpoint files the repo holds from an earlier upload (e.g. more shards) are deleted in the same commit."""
    from colm_core.checkpoint import CARD_FILE, open_checkpoint

    repo_id, revision = parse_reference(reference, revision)
    if constants.is_offline_mode():
        raise ColmError("HF_HUB_OFFLINE is set, and pushing needs the network; unset it to push")
    if get_token() is None:
        raise ColmError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` "
            "(colm takes no token flag, so that it never lands in shell history)"
        )
    ckpt = open_checkpoint(path)
    files = checkpoint_files(ckpt)
    card = model_card(ckpt.config, ckpt.history, license=license)
    api = api or HfApi(library_name="colm", library_version=__version__)
    try:
        with tempfile.TemporaryDirectory(prefix="colm-push-") as staging:
            for file in files:
                os.symlink(file.resolve(), Path(staging) / file.name)
            (Path(staging) / CARD_FILE).write_text(card)
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision not in (None, constants.DEFAULT_REVISION):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                revision=revision,
                commit_message=f"Upload a CoLM checkpoint ({ckpt.config.n_chains} chains) with colm {__version__}",
                delete_patterns=CHECKPOINT_PATTERNS,
            )
    except HfHubHTTPError as e:
        raise ColmRuntimeError(f"pushing to {repo_id} failed: {str(e).splitlines()[0]}") from None
    return reference_text(repo_id, commit.oid)
