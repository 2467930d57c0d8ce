"""The syntax of Hugging Face Hub references: `hf://ORG/NAME[@REVISION]` and Hub-cache snapshot paths.

Pure text work (no network, no torch), below everything that names a Hub repo: the model card
(base models), the Hub client (pull, push) and the resolution of command inputs.
"""

from __future__ import annotations

import os
import re

from huggingface_hub.errors import HfUriError, HFValidationError
from huggingface_hub.utils import parse_hf_uri, validate_repo_id

from colm_core.errors import ColmError

HF_SCHEME = "hf://"
# Where huggingface_hub caches a model repo: .../models--ORG--NAME/snapshots/COMMIT (ids never hold "--").
CACHED_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def parse_reference(reference: str, revision: str | None = None) -> tuple[str, str | None]:
    """(repo id, revision) from `ORG/NAME` or `hf://ORG/NAME[@REVISION]`, refusing invalid ids before any request."""
    uri = reference if reference.startswith(HF_SCHEME) else HF_SCHEME + reference
    try:
        parsed = parse_hf_uri(uri)
    except HfUriError as e:
        raise ColmError(
            f"{reference}: not a valid Hub model id ({e.msg.strip()}); expected ORG/NAME or hf://ORG/NAME[@REVISION]"
        ) from None
    if parsed.type != "model":
        raise ColmError(f"{reference} is a {parsed.type} repo; colm reads model repos: hf://ORG/NAME[@REVISION]")
    if parsed.path_in_repo:
        raise ColmError(
            f"{reference} points at {parsed.path_in_repo!r} inside a repo; give the repo itself: "
            "hf://ORG/NAME[@REVISION]"
        )
    if revision is not None and parsed.revision not in (None, revision):
        raise ColmError(f"{reference} names revision {parsed.revision!r} but --revision says {revision!r}; give one")
    return parsed.id, revision or parsed.revision


def reference_text(repo_id: str, revision: str | None) -> str:
    return f"{HF_SCHEME}{repo_id}" + (f"@{revision}" if revision else "")


def hub_repo_of(reference: str) -> str | None:
    """The Hub repo id a recorded input refers to: an `hf://` reference or a Hub-cache snapshot path."""
    if reference.startswith(HF_SCHEME):
        try:
            return parse_reference(reference)[0]
        except ColmError:
            return None
    match = CACHED_SNAPSHOT.search(reference.replace(os.sep, "/"))
    if match is None:
        return None
    repo_id = f"{match[1]}/{match[2]}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id
