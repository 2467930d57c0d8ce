"""colm import / export against real transformers models and tokenizers."""

import json

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from colm_core.checkpoint import load, open_checkpoint, save
from colm_core.errors import ColmError
from colm_core.export import export
from colm_core.llama import import_hf
from colm_core.options import GenerateOptions
from colm_core.tokenizer import ByteTokenizer
from tests.conftest import assert_one_line_error, colm_in_process, tiny_model

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
HF_VARIANTS = {
    # GQA, untied, config.json rewritten in the transformers 4.x layout (rope_theta at the top level)
    "gqa-untied-4x": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    # Llama-3 RoPE scaling in the 5.x rope_parameters layout, weights in several shards
    "rope-scaling-sharded": dict(
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING},
    ),
}


def bpe_tokenizer(vocab_size=120) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([TEXT] * 20, trainer)
    return tok


def hf_llama_dir(path, variant):
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=2,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=64,
        **HF_VARIANTS[variant],
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm gains, so a mixed-up norm cannot hide behind all-ones
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path, max_shard_size="40KB" if "sharded" in variant else "1GB")
    bpe_tokenizer().save(str(path / "tokenizer.json"))
    if variant.endswith("-4x"):
        data = json.loads((path / "config.json").read_text())
        params = data.pop("rope_parameters")
        data["rope_theta"] = params["rope_theta"]
        (path / "config.json").write_text(json.dumps(data))
    return path


def probe(vocab=128):
    return torch.randint(0, vocab, (2, 40))  # longer than the RoPE scaling's original context


@pytest.mark.parametrize("variant", HF_VARIANTS)
def test_import_then_export_hf_llama_match_transformers(tmp_path, variant):
    src = hf_llama_dir(tmp_path / "hf", variant)
    if "sharded" in variant:
        assert (src / "model.safetensors.index.json").is_file()
    reference = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    import_hf(src, tmp_path / "colm", verify=False)
    model = load(tmp_path / "colm")
    assert model.config.n_chains == 1 and model.config.tie_embeddings == HF_VARIANTS[variant]["tie_word_embeddings"]
    ids = probe()
    with torch.no_grad():
        expected = reference(ids).logits
        assert (model(ids) - expected).abs().max().item() <= 1e-5
    source_tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    assert model.tokenizer.encode(TEXT) == source_tok.encode(TEXT).ids

    export(tmp_path / "colm", tmp_path / "out", fmt="hf-llama", verify=False)
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (exported(ids).logits - expected).abs().max().item() <= 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "out").encode(TEXT) == source_tok.encode(TEXT).ids
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"] == 2


def test_import_and_export_verify_and_record_provenance(tmp_path):
    src = hf_llama_dir(tmp_path / "hf", "tied")
    report = import_hf(src, tmp_path / "colm")
    assert report["max_abs_diff"] <= report["tolerance"] and report["probe"] == [2, 32]
    report = export(tmp_path / "colm", tmp_path / "bf16", fmt="hf-llama", dtype=torch.bfloat16)
    assert report["max_abs_diff"] <= report["tolerance"]
    with safe_open(tmp_path / "bf16" / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    history = json.loads((tmp_path / "bf16" / "colm_history.json").read_text())
    assert [h["command"] for h in history] == ["import", "export"]
    assert history[1]["args"] == {"format": "hf-llama", "dtype": "bfloat16"}
    assert "`colm export` format=hf-llama, dtype=bfloat16" in (tmp_path / "bf16" / "README.md").read_text()


@pytest.mark.parametrize("variant", ["colm", "air", "tied"])
def test_export_hf_loads_with_trust_remote_code_at_every_chain_count(tmp_path, variant):
    overrides = {
        "colm": {},
        "air": dict(kv_share=True, heads=[2, 4, 2], kv_heads=[2, 0, 0]),
        "tied": dict(tie_embeddings=True),
    }[variant]
    model = tiny_model(**overrides)
    save(model, tmp_path / "m")
    export(tmp_path / "m", tmp_path / "hf", fmt="hf", verify=False)
    assert "import colm" not in (tmp_path / "hf" / "modeling_colm.py").read_text()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        for k in range(1, model.config.n_chains + 1):
            assert (theirs(ids, chains=k).logits - model(ids, chains=k)).abs().max().item() <= 1e-5
        assert (theirs(ids).logits - model(ids)).abs().max().item() <= 1e-5  # default: every chain
        two = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True, chains=2).eval()
        assert two.config.chains == 2
        assert (two(ids).logits - model(ids, chains=2)).abs().max().item() <= 1e-5
        # a right-padded batch: the real tokens' logits do not depend on the padding
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        padded = theirs(ids, attention_mask=mask).logits
        assert (padded[1, :8] - model(ids[1:, :8])[0]).abs().max().item() <= 1e-5
        assert torch.isfinite(padded).all()


def test_export_of_byte_tokenizer_is_an_equivalent_tokenizer_json(tmp_path):
    save(tiny_model(vocab_size=258, bos_token_id=256, eos_token_id=257), tmp_path / "m")
    export(tmp_path / "m", tmp_path / "hf", fmt="hf", verify=False)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Héllo, wörld!\n\t≈ 🙂"
    assert tok.encode(text) == ByteTokenizer().encode(text, add_special_tokens=True) == [256, *text.encode()]
    assert tok.encode(text, add_special_tokens=False) == list(text.encode())
    assert tok.decode(ByteTokenizer().encode(text), skip_special_tokens=True) == text
    assert tok.eos_token_id == 257 and tok.bos_token_id == 256


def test_cli_import_inspect_expand_an_hf_directory(tmp_path):
    src = hf_llama_dir(tmp_path / "hf", "gqa-untied-4x")
    env = {"COLM_CACHE_DIR": str(tmp_path / "cache")}
    proc = colm_in_process("import", src, "-o", tmp_path / "colm", check=True)
    assert proc.stdout.strip() == str(tmp_path / "colm")
    assert "verified import vs transformers" in " ".join(proc.stderr.split())
    report = json.loads(
        colm_in_process("inspect", src, "--json", env=env, check=True).stdout
    )  # the HF directory itself
    assert report["config"]["heads"] == [4] and report["config"]["kv_heads"] == [2]
    proc = colm_in_process("expand", src, "--add-chains", "1", "--air", env=env, cwd=tmp_path, check=True)
    out = proc.stdout.strip()
    assert out.startswith(str(tmp_path / "hf-")) and out.endswith("-expand")  # beside the input, not in the cache
    assert open_checkpoint(out).config.kv_heads == [2, 0]
    assert_one_line_error(
        colm_in_process("export", out, "--format", "hf-llama", "-o", tmp_path / "x"),
        2,
        "slice to 1 chain first: colm slice --chains 1",
    )
    assert not (tmp_path / "x").exists()


def test_import_refuses_what_it_cannot_convert(tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ColmError, match="'GPT2LMHeadModel'.*is not supported; colm imports LlamaForCausalLM"):
        import_hf(gpt2, tmp_path / "out")
    assert_one_line_error(colm_in_process("import", gpt2, "-o", tmp_path / "out"), 2, "colm imports LlamaForCausalLM")
    notes = tmp_path / "notes"
    notes.mkdir()
    with pytest.raises(ColmError, match="no config.json"):
        import_hf(notes, tmp_path / "out")
    src = hf_llama_dir(tmp_path / "hf", "tied")
    with pytest.raises(ColmError, match="inside the input"):
        import_hf(src, src / "colm")
    with pytest.raises(ColmError, match="^fmt gguf: choose one of hf-llama, hf"):
        export(src, tmp_path / "out", fmt="gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "hf", "notes"]


# --- tokenizers and Hugging Face round trips --------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def save_hf_tokenizer(path, adds_bos: bool, chat_template: str | None = None):
    """tokenizer.json + tokenizer_config.json as transformers saves them, with a BOS policy of their own."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = bpe_tokenizer()
    tok.post_processor = (
        processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        if adds_bos
        else processors.ByteLevel(trim_offsets=False)
    )  # SmolLM2's: no BOS
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=chat_template
    ).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("adds_bos", [False, True])
def test_bos_follows_the_tokenizer_and_greedy_generation_matches_transformers(tmp_path, adds_bos):
    import colm_core
    from colm_core.evaluate import token_stream

    src = hf_llama_dir(tmp_path / "hf", "tied")
    reference_tok = save_hf_tokenizer(src, adds_bos)
    prompt = "It is a truth universally"
    inputs = reference_tok(prompt, return_tensors="pt")
    assert (inputs.input_ids[0, 0].item() == 1) == adds_bos  # the tokenizer itself decides
    reference = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    expected = reference.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs.input_ids.shape[1] :]

    model = colm_core.load(str(src))  # a Hugging Face directory, as every command reads it
    out = colm_core.generate(model, prompt, GenerateOptions(max_new_tokens=12))
    assert out["prompt_ids"] == inputs.input_ids[0].tolist()
    assert out["token_ids"] == expected.tolist()[: len(out["token_ids"])] and len(out["token_ids"]) > 1
    assert token_stream(model.tokenizer, [prompt]) == inputs.input_ids[0].tolist() + [2]  # evaluation, training

    if not adds_bos:  # the CLI used to prepend config.bos_token_id whatever the tokenizer said
        proc = colm_in_process(
            "generate",
            src,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
            "--json",
            env={"COLM_CACHE_DIR": str(tmp_path / "cache")},
            check=True,
        )
        report = json.loads(proc.stdout)
        assert report["prompt_ids"] == out["prompt_ids"] and report["token_ids"] == out["token_ids"]


def test_chat_template_and_special_tokens_survive_import_and_export(tmp_path):
    src = hf_llama_dir(tmp_path / "hf", "tied")
    source_tok = save_hf_tokenizer(src, adds_bos=True, chat_template=CHAT_TEMPLATE)
    colm_in_process("import", src, "-o", tmp_path / "colm", "--no-verify", check=True)
    export(tmp_path / "colm", tmp_path / "out", fmt="hf-llama", verify=False)
    exported = AutoTokenizer.from_pretrained(tmp_path / "out")
    messages = [{"role": "user", "content": "Who is Emma?"}]
    rendered = source_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<s>user: Who is Emma?</s>")
    assert exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == rendered
    assert (exported.unk_token, exported.bos_token, exported.eos_token) == ("<unk>", "<s>", "</s>")
    assert exported(TEXT).input_ids == source_tok(TEXT).input_ids


def test_the_import_cache_follows_the_tokenizer_and_a_missing_one_is_refused(tmp_path, monkeypatch):
    from colm_core.resolve import resolve_checkpoint

    monkeypatch.setenv("COLM_CACHE_DIR", str(tmp_path / "cache"))
    src = hf_llama_dir(tmp_path / "hf", "tied")
    first = load(resolve_checkpoint(src))
    assert first.tokenizer.encode(TEXT) == bpe_tokenizer().encode(TEXT).ids
    other = bpe_tokenizer(vocab_size=100)
    other.save(str(src / "tokenizer.json"))
    assert load(resolve_checkpoint(src)).tokenizer.encode(TEXT) == other.encode(TEXT).ids
    (src / "tokenizer.json").unlink()  # vocabulary 128: the byte tokenizer would be gibberish
    with pytest.raises(ColmError, match="has no tokenizer.json, and its vocabulary of 128 tokens"):
        resolve_checkpoint(src)
    assert_one_line_error(
        colm_in_process("eval", src, "--data", __file__, env={"COLM_CACHE_DIR": str(tmp_path / "c2")}),
        2,
        "copy the model's tokenizer.json into the directory",
    )


def test_colm_reads_its_own_hf_export_back_exactly(tmp_path):
    import colm_core

    model = tiny_model(tie_embeddings=True)
    save(model, tmp_path / "m")
    export(tmp_path / "m", tmp_path / "hf", fmt="hf", verify=False)
    env = {"COLM_CACHE_DIR": str(tmp_path / "cache")}
    report = json.loads(colm_in_process("inspect", tmp_path / "hf", "--json", env=env, check=True).stdout)
    assert report["config"] == open_checkpoint(tmp_path / "m").config.to_dict()
    assert [h["command"] for h in report["history"]] == ["export"]
    assert not (tmp_path / "cache").exists()  # inspect reads a Hugging Face directory in place

    proc = colm_in_process("import", tmp_path / "hf", "-o", tmp_path / "back", check=True)
    assert "verified import vs the export's" in proc.stderr
    original, back = open_checkpoint(tmp_path / "m"), open_checkpoint(tmp_path / "back")
    assert back.config == original.config and back.config.tokenizer == "byte"
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(original.tensors(), back.tensors(original.weight_map)))
    assert [h["command"] for h in back.history] == ["export", "import"]

    loaded = colm_core.load(str(tmp_path / "hf"))  # as every command reads it
    assert not loaded.training
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids, chains=2), model(ids, chains=2))


def test_import_without_output_writes_into_the_working_directory(tmp_path):
    src = hf_llama_dir(tmp_path / "models" / "hf", "tied")
    work = tmp_path / "work"
    work.mkdir()
    proc = colm_in_process("import", src, "--no-verify", cwd=work, check=True)
    assert proc.stdout.strip() == str(work / "hf-colm")
    assert sorted(p.name for p in src.parent.iterdir()) == ["hf"]


def test_slice_of_expand_of_an_imported_model_is_the_same_bytes(tmp_path):
    from colm_core.surgery import expand, slice_

    src = hf_llama_dir(tmp_path / "hf", "rope-scaling-sharded")
    import_hf(src, tmp_path / "m", verify=False)
    expand(tmp_path / "m", tmp_path / "big", add_chains=2, verify=False)
    slice_(tmp_path / "big", tmp_path / "back", chains=1, verify=False)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "m" / name).read_bytes(), name


def test_sequence_start_is_what_transformers_encodes_whatever_tokenizer_config_says(tmp_path):
    from colm_core.tokenizer import HFTokenizer

    tok = bpe_tokenizer()
    tok.post_processor = None
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "add_bos_token": True,
                "bos_token": "<s>",
                "eos_token": "</s>",
            }
        )
    )
    theirs = AutoTokenizer.from_pretrained(tmp_path)(TEXT).input_ids
    assert HFTokenizer(tmp_path / "tokenizer.json", bos_id=1, eos_id=2).encode(TEXT, add_special_tokens=True) == theirs


def test_a_byte_vocabulary_imports_without_tokenizer_json(tmp_path):
    cfg = LlamaConfig(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "colm", verify=False)
    assert open_checkpoint(tmp_path / "colm").config.tokenizer == "byte"
