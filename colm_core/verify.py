"""Probe-batch checks that surgery, import and export did what they claim.

Every check runs a fixed batch of token ids through the result and through what it must equal:
the input model (expand: old chains and logits exactly; slice: the k-chain sub-model exactly) or
the `transformers` reference (import, export: equal up to float reordering). A failed check raises
ColmRuntimeError, so the command exits 1 and, since callers verify inside `atomic_directory`,
leaves no output. Checks load whole models into memory: they are the one non-streaming step,
skipped with --no-verify.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import torch

from colm_core.checkpoint import load, open_checkpoint
from colm_core.errors import ColmRuntimeError

PROBE_SEED = 0
PROBE_SHAPE = (2, 32)
REFERENCE_RTOL = 1e-4  # of the largest reference logit: fp32 reordering is ~1e-6 of it; a wrong weight is ~1


def probe_batch(vocab_size: int, max_seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(0, vocab_size, (PROBE_SHAPE[0], min(PROBE_SHAPE[1], max_seq_len)), generator=g)


@torch.no_grad()
def activations(model, ids: torch.Tensor, chains: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's output (residual stream) and the logits."""
    acts = []
    hooks = [layer.register_forward_hook(lambda m, i, o: acts.append(o)) for layer in model.layers]
    try:
        logits = model(ids, chains=chains)
    finally:
        for h in hooks:
            h.remove()
    return acts, logits


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _exact(report: dict, what: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    diff = max(max_abs_diff(a, b) for a, b in pairs)
    report.update(check=what, max_abs_diff=diff, exact=all(torch.equal(a, b) for a, b in pairs))
    if not report["exact"]:
        raise ColmRuntimeError(f"verification failed: {what} differs (max abs diff {diff:.3g}); nothing was written")
    return report


def _close(report: dict, what: str, ours: torch.Tensor, reference: torch.Tensor) -> dict:
    diff = max_abs_diff(ours, reference)
    tolerance = REFERENCE_RTOL * max(1.0, reference.abs().max().item())
    report.update(check=what, max_abs_diff=max(diff, report.get("max_abs_diff", 0.0)), tolerance=tolerance)
    if not diff <= tolerance:
        raise ColmRuntimeError(
            f"verification failed: {what} differs by {diff:.3g} (tolerance {tolerance:.3g}); nothing was written"
        )
    return report


def verify_expand(source: Path, expanded: Path) -> dict:
    """Old-chain activations of every layer, and the logits at both chain counts, equal the input's exactly."""
    old = load(source)
    n_old, width = old.config.n_chains, old.config.hidden_size()
    ids = probe_batch(old.config.vocab_size, old.config.max_seq_len)
    old_acts, old_logits = activations(old, ids)
    del old
    new = load(expanded)
    sub_acts, sub_logits = activations(new, ids, chains=n_old)
    full_acts, full_logits = activations(new, ids)
    pairs = [(old_logits, sub_logits), (old_logits, full_logits)]
    pairs += [(a, s) for a, s in zip(old_acts, sub_acts)] + [(a, f[..., :width]) for a, f in zip(old_acts, full_acts)]
    return _exact({"probe": list(ids.shape)}, f"expanded model vs input ({n_old} chains and all)", pairs)


def verify_slice(source: Path, sliced: Path, chains: int) -> dict:
    """The slice's logits equal the input's `chains`-chain sub-model's exactly."""
    model = load(source)
    ids = probe_batch(model.config.vocab_size, model.config.max_seq_len)
    with torch.no_grad():
        expected = model(ids, chains=chains)
        del model
        got = load(sliced)(ids)
    return _exact({"probe": list(ids.shape)}, f"slice vs input at {chains} chains", [(expected, got)])


def _transformers():
    """transformers, quiet, or None when it is not installed (it is only needed to verify)."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


SKIPPED = {"check": "skipped: transformers is not installed (pip install transformers to verify)"}


def verify_import(hf_dir: Path, imported: Path) -> dict:
    """The imported CoLM's logits match transformers' LlamaForCausalLM on the same directory (fp32)."""
    transformers = _transformers()
    if transformers is None:
        return dict(SKIPPED)
    model = load(imported, dtype=torch.float32)
    ids = probe_batch(model.config.vocab_size, model.config.max_seq_len)
    with torch.no_grad():
        ours = model(ids)
        del model
        reference = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        theirs = reference(ids).logits
    return _close({"probe": list(ids.shape)}, "import vs transformers LlamaForCausalLM", ours, theirs)


# Text on which an imported tokenizer must give transformers' ids: words, digits, punctuation, runs of
# spaces, newlines, accents and characters outside most vocabularies (byte fallback).
TOKENIZER_SAMPLE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n\n  Mr. Bennet's 3 daughters, 1813 -- caf\u00e9 na\u00efve \u00fcber "
    "\u65e5\u672c\u8a9e \U0001f600 e=mc^2; x<y>z {braces} [1,2,3]\ttab   end"
)


def verify_gguf_import(gguf_file: Path, imported: Path) -> dict:
    """The imported CoLM's logits match transformers' own GGUF loading of the file (fp32), and its
    tokenizer gives the ids transformers' does on TOKENIZER_SAMPLE."""
    transformers = _transformers()
    if transformers is None:
        return dict(SKIPPED)
    gguf_file = Path(gguf_file)
    model = load(imported, dtype=torch.float32)
    ids = probe_batch(model.config.vocab_size, model.config.max_seq_len)
    ours_ids = model.tokenizer.encode(TOKENIZER_SAMPLE, add_special_tokens=True)
    with torch.no_grad():
        ours = model(ids)
        del model
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' dequantization progress bar (plain tqdm)
            reference = transformers.LlamaForCausalLM.from_pretrained(
                gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
            ).eval()
        theirs = reference(ids).logits
    report = _close({"probe": list(ids.shape)}, "import vs transformers' GGUF loading", ours, theirs)
    theirs_ids = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)(
        TOKENIZER_SAMPLE
    )["input_ids"]
    if ours_ids != theirs_ids:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours_ids, theirs_ids)) if a != b), min(len(ours_ids), len(theirs_ids))
        )
        raise ColmRuntimeError(
            f"verification failed: the tokenizer rebuilt from the GGUF metadata differs from "
            f"transformers' at token {first} of the sample; nothing was written"
        )
    report["tokenizer_sample_tokens"] = len(ours_ids)
    report["check"] += " (logits; tokenizer ids on a text sample)"
    return report


def verify_export(source: Path, exported: Path, fmt: str, dtype: torch.dtype) -> dict:
    """transformers loads the export and its logits match the input's at every chain count (fp32; the
    input is rounded to the export dtype first, so only the computation is compared)."""
    transformers = _transformers()
    if transformers is None:
        return dict(SKIPPED)
    model = load(source, dtype=dtype).float()
    ids = probe_batch(model.config.vocab_size, model.config.max_seq_len)
    report = {"probe": list(ids.shape)}
    with torch.no_grad():
        if fmt == "hf-llama":
            theirs = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
            return _close(report, "export vs transformers LlamaForCausalLM", model(ids), theirs(ids).logits)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            exported, dtype=torch.float32, trust_remote_code=True
        ).eval()
        for k in range(1, model.config.n_chains + 1):
            _close(
                report,
                f"export vs transformers (trust_remote_code) at 1..{k} chains",
                model(ids, chains=k),
                theirs(ids, chains=k).logits,
            )
    return report


def verify_same_tensors(expected: Iterator[tuple[str, torch.Tensor]], imported: Path) -> dict:
    """Every tensor of the imported checkpoint equals the source's bit for bit (a colm export read back:
    its tensors are colm's, so nothing is recomputed and nothing may differ)."""
    ckpt = open_checkpoint(imported)
    different = [name for name, tensor in expected if not torch.equal(next(ckpt.tensors([name]))[1], tensor)]
    if different:
        raise ColmRuntimeError(
            f"verification failed: tensor {different[0]!r} differs from the source's; nothing was written"
        )
    return {"check": f"import vs the export's {len(ckpt.weight_map)} tensors, bit for bit", "exact": True}
