"""GGUF import: tiny Llama GGUF files written with the gguf package's writer, imported by colm and
compared with transformers' own GGUF loading of the same file (logits and tokenizer ids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType, GGUFWriter, quants
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from colm_core.checkpoint import load, open_checkpoint
from colm_core.errors import ColmError
from colm_core.gguf import import_gguf
from colm_core.inspect import describe
from tests.conftest import assert_one_line_error, colm_in_process

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families 1811, 1812.\n"
)
SAMPLE = "My dear Mr. Bennet,  have you heard that Netherfield Park is let at last?\n\tcaf\u00e9 \u65e5\u672c 42!"
HIDDEN, HEADS, KV_HEADS, FFN = 256, 4, 2, 512  # rows of 256: the K-quant block
# A K-quant block's float16 scale fields (byte offsets), set to small values: the rest of a block is
# random bytes, any of which is a valid quantized value (the gguf package cannot quantize these types).
K_SCALES = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def byte_level_vocab() -> dict:
    """tokenizer.ggml.* of a byte-level BPE trained on TEXT, with control tokens, as SmolLM2's GGUF has."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        [TEXT] * 10,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    return {
        "model": "gpt2",
        "tokens": tokens,
        "types": [3 if t.startswith("<|") else 1 for t in tokens],
        "merges": [" ".join(m) for m in model["merges"]],
        "bos": 1,
        "eos": 2,
        "add_bos": False,
    }


def sentencepiece_vocab() -> dict:
    """tokenizer.ggml.* of a SentencePiece vocabulary (byte fallback, scores, no merges), as Llama 2's GGUF has."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator([TEXT] * 10, trainers.BpeTrainer(vocab_size=200))
    model = json.loads(tok.to_str())["model"]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>"] + byte_tokens + pieces
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    return {
        "model": "llama",
        "tokens": tokens,
        "types": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "scores": scores,
        "bos": 1,
        "eos": 2,
        "unk": 0,
    }


def reference_llama(vocab_size: int, tie: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm gains, so a mixed-up norm cannot hide behind all-ones
        for name, p in model.named_parameters():
            (p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.05))
    return model


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of query/key rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor(w: np.ndarray, kind: T, rng: np.random.Generator):
    """(data, raw_dtype) of a weight matrix stored as `kind`."""
    if kind == T.F32:
        return w, None
    if kind == T.F16:
        return w.astype(np.float16), None
    if kind in K_SCALES:
        block_elems, block_bytes = 256, {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}[kind]
        blocks = rng.integers(0, 256, (w.shape[0], w.shape[1] // block_elems, block_bytes), dtype=np.uint8)
        for offset in K_SCALES[kind]:
            scale = rng.uniform(1e-3, 4e-3, blocks.shape[:2]).astype(np.float16)
            blocks[..., offset : offset + 2] = scale[..., None].view(np.uint8).reshape(*blocks.shape[:2], 2)
        return blocks.reshape(w.shape[0], -1), kind
    return quants.quantize(w, kind), kind


def write_gguf(
    path,
    vocab: dict,
    kind: T = T.F32,
    tie: bool = False,
    architecture: str = "llama",
    extra_tensor: tuple[str, np.ndarray] | None = None,
    meta: dict | None = None,
    store=None,
):
    """A tiny Llama GGUF file as llama.cpp's converter writes one; returns the transformers model it holds.

    meta: metadata key -> (value, GGUFValueType) written over the converter's; store(name, array): the
    array stored for each weight (a file that disagrees with its metadata)."""
    ref = reference_llama(len(vocab["tokens"]), tie)
    w = GGUFWriter(str(path), architecture)
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab["tokens"]))
    w.add_tokenizer_model(vocab["model"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if "merges" in vocab:
        w.add_token_merges(vocab["merges"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    if "unk" in vocab:
        w.add_unk_token_id(vocab["unk"])
    if "add_bos" in vocab:
        w.add_add_bos_token(vocab["add_bos"])
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for hf, g in [
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ]:
        for i in range(2):
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    rng = np.random.default_rng(0)
    for hf_name, tensor in ref.state_dict().items():
        if hf_name == "lm_head.weight" and tie:
            continue
        data = tensor.numpy().copy()
        if "q_proj" in hf_name:
            data = permute(data, HEADS)
        elif "k_proj" in hf_name:
            data = permute(data, KV_HEADS)
        if store is not None:
            data = store(names[hf_name], data)
        if data.ndim == 1:  # norms stay float32, as llama.cpp keeps them
            w.add_tensor(names[hf_name], data)
        else:
            stored, raw = gguf_tensor(data, kind, rng)
            w.add_tensor(names[hf_name], stored, raw_dtype=raw)
    if extra_tensor:
        w.add_tensor(*extra_tensor)
    for key, (value, value_type) in (meta or {}).items():
        w.add_key_value(key, value, value_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


def transformers_gguf(path):
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize(
    "kind", [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda k: k.name
)
def test_every_tensor_type_imports_with_transformers_logits(tmp_path, kind):
    src = tmp_path / "m.gguf"
    write_gguf(src, byte_level_vocab(), kind, tie=kind == T.Q4_K)
    report = import_gguf(src, tmp_path / "colm")  # its own check: logits and tokenizer ids
    assert report["check"].startswith("import vs transformers' GGUF loading"), report
    reference, _ = transformers_gguf(src)
    ours = load(tmp_path / "colm")
    assert ours.config.tie_embeddings == (kind == T.Q4_K) and ours.config.heads == [HEADS]
    ids = torch.randint(0, ours.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(ids).logits
        assert (ours(ids) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_query_key_permutation_is_undone_exactly(tmp_path):
    """Without transformers' loader in between: float32 weights come back as the model they were written from."""
    src = tmp_path / "m.gguf"
    ref = write_gguf(src, byte_level_vocab(), T.F32)
    import_gguf(src, tmp_path / "colm", verify=False)
    tensors = dict(
        open_checkpoint(tmp_path / "colm").tensors(["layers.1.attn.q.weights.0", "layers.1.attn.k.weights.0"])
    )
    assert torch.equal(tensors["layers.1.attn.q.weights.0"], ref.model.layers[1].self_attn.q_proj.weight)
    assert torch.equal(tensors["layers.1.attn.k.weights.0"], ref.model.layers[1].self_attn.k_proj.weight)


@pytest.mark.parametrize("vocab", [byte_level_vocab, sentencepiece_vocab], ids=["bpe", "sentencepiece"])
def test_tokenizer_gives_transformers_ids_with_special_tokens(tmp_path, vocab):
    src = tmp_path / "m.gguf"
    write_gguf(src, vocab(), T.Q8_0)
    import_gguf(src, tmp_path / "colm")
    ours = load(tmp_path / "colm").tokenizer
    _, theirs = transformers_gguf(src)
    text = SAMPLE + (" <|im_start|>user hi<|im_end|>" if vocab is byte_level_vocab else "")
    assert ours.encode(text, add_special_tokens=True) == theirs(text)["input_ids"]
    assert ours.decode(ours.encode(SAMPLE)) == theirs.decode(theirs(SAMPLE, add_special_tokens=False)["input_ids"])
    if vocab is sentencepiece_vocab:  # a BOS first, and characters outside the vocabulary as bytes
        assert ours.encode("\u65e5", add_special_tokens=True)[0] == 1
        assert "<0xE6>" in [theirs.convert_ids_to_tokens(i) for i in ours.encode("\u65e5")]
    else:  # control tokens stay whole
        assert ours.encode("<|im_start|>") == [1]


def test_cli_reads_a_gguf_file_wherever_it_takes_a_model(tmp_path):
    src = tmp_path / "tiny.gguf"
    write_gguf(src, byte_level_vocab(), T.Q4_0)
    env = {"COLM_CACHE_DIR": str(tmp_path / "cache")}
    proc = colm_in_process("import", src, cwd=tmp_path, env=env, check=True)
    assert proc.stdout.strip() == str(tmp_path / "tiny-colm")
    assert "verified import vs transformers' GGUF loading" in " ".join(proc.stderr.split())
    report = describe(src)  # `colm inspect` reads the file in place
    assert report["config"]["kv_heads"] == [KV_HEADS] and report["files"] == ["tiny.gguf"]
    out = colm_in_process("expand", src, "--ffn", "256", cwd=tmp_path, env=env, check=True).stdout.strip()
    assert out.startswith(str(tmp_path / "tiny-")) and open_checkpoint(out).config.ffn == [FFN, 256]


def test_what_cannot_be_imported_is_one_line_error(tmp_path):
    falcon = tmp_path / "falcon.gguf"
    write_gguf(falcon, byte_level_vocab(), architecture="falcon")
    assert_one_line_error(
        colm_in_process("import", falcon, "-o", tmp_path / "a"), 2, "architecture 'falcon' is not supported"
    )
    f64 = tmp_path / "f64.gguf"
    write_gguf(f64, byte_level_vocab(), extra_tensor=("extra.weight", np.zeros((4, 4))))
    with pytest.raises(ColmError, match="tensor type F64 cannot be dequantized"):
        import_gguf(f64, tmp_path / "b")
    extra = tmp_path / "rope.gguf"
    write_gguf(extra, byte_level_vocab(), extra_tensor=("rope_freqs.weight", np.ones(32, dtype=np.float32)))
    with pytest.raises(ColmError, match="Llama 3 RoPE scaling"):
        import_gguf(extra, tmp_path / "c")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(ColmError, match="not a readable GGUF file"):
        import_gguf(tmp_path / "junk.gguf", tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "transposed",
            "tensor 'blk.0.ffn_gate.weight' has shape [256, 512], but the metadata describes a model whose "
            "blk.0.ffn_gate.weight is [512, 256]",
        ),
        ("wider", "its metadata describes no model colm can build: hidden_size 258 != heads 4 x head_dim 64"),
        (
            "wider heads",
            "tensor 'token_embd.weight' has shape [400, 256], but the metadata describes a model whose "
            "token_embd.weight is [400, 512]",
        ),
        ("no heads", "metadata 'llama.attention.head_count' is 0, not a positive whole number"),
        ("text heads", "metadata 'llama.attention.head_count' is 'four', not a positive whole number"),
        (
            "fewer kv heads",
            "tensor 'blk.0.attn_k.weight' has shape [128, 256], but the metadata describes a model whose "
            "blk.0.attn_k.weight is [64, 256]",
        ),
    ],
)
def test_a_gguf_whose_tensors_disagree_with_its_metadata_is_refused_on_every_path(tmp_path, case, message):
    """Every command that takes a .gguf (import, inspect, and the implicit import of the others) checks each
    tensor's shape against the configuration the metadata describes: one line naming file and tensor, exit 2."""
    u32 = GGUFValueType.UINT32
    meta, store = {
        "transposed": ({}, lambda name, w: w.T.copy() if name == "blk.0.ffn_gate.weight" else w),
        "wider": ({"llama.embedding_length": (HIDDEN + 2, u32)}, None),
        "wider heads": ({"llama.embedding_length": (2 * HIDDEN, u32), "llama.rope.dimension_count": (128, u32)}, None),
        "no heads": ({"llama.attention.head_count": (0, u32)}, None),
        "text heads": ({"llama.attention.head_count": ("four", GGUFValueType.STRING)}, None),
        "fewer kv heads": ({"llama.attention.head_count_kv": (1, u32)}, None),
    }[case]
    src = tmp_path / "bad.gguf"
    write_gguf(src, byte_level_vocab(), meta=meta, store=store)
    env = {"COLM_CACHE_DIR": str(tmp_path / "cache")}
    for args in (
        ["import", src, "-o", tmp_path / "out"],
        ["inspect", src],
        ["expand", src, "-o", tmp_path / "out"],
        ["generate", src, "--prompt", "Hi", "--max-new-tokens", "2"],
        ["eval", src, "--max-tokens", "8"],
    ):
        proc = colm_in_process(*args, cwd=tmp_path, env=env)
        assert_one_line_error(proc, 2, f"{src}: ")
        assert message in proc.stderr
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").glob("imports/*"))
