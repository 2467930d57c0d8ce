"""No code runs from data: no pickle is ever loaded (torch.load only with weights_only=True, no pickle
module, numpy never allows pickles) and trust_remote_code is never enabled implicitly: only
verify_export passes it, to load the export colm has just written with its own modeling file."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

SOURCES = sorted(
    p for d in ("colm_core", "colm_cli", "colm_kernels", "benchmarks", "scripts") for p in (REPO / d).rglob("*.py")
)
SOURCES += sorted(REPO.glob("experiments/**/*.py"))


def calls(pattern: str) -> list[tuple[Path, str]]:
    """(file, statement) of every call matching `pattern`; a statement runs to its closing parenthesis."""
    found = []
    for path in SOURCES:
        text = path.read_text()
        for m in re.finditer(pattern, text):
            depth, end = 0, m.end()
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            found.append((path.relative_to(REPO), text[m.start() : end + 1]))
    return found


def test_the_sources_are_found():
    assert len(SOURCES) > 20 and any(p.name == "checkpoint.py" for p in SOURCES)


def test_no_pickle_is_ever_loaded():
    unsafe = [(p, c) for p, c in calls(r"\btorch\.load\(") if "weights_only=True" not in c]
    assert unsafe == []
    assert [p for p in SOURCES if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", p.read_text(), re.M)] == []
    assert [(p, c) for p, c in calls(r"\bnp\.load\(") if "allow_pickle=True" in c] == []
    assert [(p, c) for p, c in calls(r"\bpickle\.loads?\(")] == []


def test_trust_remote_code_is_never_enabled_implicitly():
    # hf_modeling/ is the remote code itself, shipped inside `--format hf` exports; it loads nothing
    loads = [(p.as_posix(), c) for p, c in calls(r"\.from_pretrained\(") if "hf_modeling" not in p.parts]
    assert len(loads) >= 2, loads  # the pattern finds the loads there are
    trusting = [(p, c) for p, c in loads if "trust_remote_code" in c or "**" in c]
    assert [p for p, _ in trusting] == ["colm_core/verify.py"], trusting
    call = "".join(trusting[0][1].split())  # as the formatter may wrap it
    assert call.startswith(".from_pretrained(exported,"), trusting  # the export colm has just written
