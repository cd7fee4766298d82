"""What the random-weight builders of pipelines with a Qwen3 text encoder share (Z-Image,
FLUX.2-klein): Qwen3-4B's config and its small stand-in, an offline tokenizer of the real kind,
and the building itself (build_qwen3_pipeline).

The tokenizer is a real byte-level Qwen2 BPE (Qwen3's pre-tokenizer, added tokens and chat
template, thinking switch included) with a small vocabulary made here: every byte, a few
merges of common letter pairs, and Qwen3's special tokens.  transformers 5's tokenizer
constructors can drop a vocabulary silently, so the built folder is read back and two
prompts must give different ids (check_tokenizer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

# Qwen3-4B (the text_encoder/config.json of Tongyi-MAI/Z-Image-Turbo and FLUX.2-klein-4B)
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=40960,
    rms_norm_eps=1e-06,
    rope_theta=1000000,
    tie_word_embeddings=True,
    attention_bias=False,
    bos_token_id=151643,
    eos_token_id=151645,
)


def tiny_qwen3(layers: int) -> dict:
    """Qwen3-4B's config in small (width 32, 4 heads of 8, a vocabulary of 512) with `layers` layers."""
    return dict(QWEN3_4B, vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                bos_token_id=None, eos_token_id=None)


# Qwen3's special and added tokens (as its tokenizer.json has them: the first three special)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<think>", "</think>"]

# Qwen3's chat template (tokenizer_config.json of the Qwen3 checkpoints), as Jinja text:
# `enable_thinking=False` adds an empty think block after the assistant's header.
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# merged letter pairs of the small vocabulary ("Ġ" is the byte-level space)
MERGES = [("t", "h"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("r", "e"), ("o", "n"), ("a", "t"), ("o", "r"),
          ("e", "s"), ("Ġ", "a"), ("Ġ", "t"), ("Ġ", "th"), ("Ġ", "o"), ("Ġ", "s"), ("Ġ", "c")]


def qwen2_tokenizer(model_max_length: int = 131072):
    """A transformers Qwen2Tokenizer (byte-level BPE, Qwen's pre-tokenizer) over a small
    vocabulary: every byte, MERGES, then Qwen3's special and added tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from sdcli.convert.random_weights import bytes_to_unicode

    vocab: dict[str, int] = {}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    for token in SPECIAL_TOKENS + ADDED_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(MERGES), unk_token=None, bos_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=model_max_length,
                               errors="replace", clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def check_tokenizer(folder: Path, vocab_size: int) -> None:
    """The saved tokenizer, read back as diffusers reads it, must know its vocabulary: two
    prompts give different ids, the special tokens are single ids within the text encoder's
    embeddings, and the chat template's thinking switch works."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    one = tokenizer("a photo of an astronaut").input_ids
    two = tokenizer("a red house by the sea").input_ids
    if one == two or len(set(one)) < 3:
        raise RuntimeError(f"the tokenizer written to {folder} lost its vocabulary: {one} vs {two}")
    for token in SPECIAL_TOKENS + ADDED_TOKENS:
        ids = tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1 or not 0 <= ids[0] < vocab_size:
            raise RuntimeError(f"the tokenizer written to {folder} splits {token!r} into {ids}")
    messages = [{"role": "user", "content": "hi"}]
    thinking = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    if thinking != "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" or plain != thinking + "<think>\n\n</think>\n\n":
        raise RuntimeError(f"the chat template written to {folder} renders {thinking!r} / {plain!r}")


COMPONENTS = ("transformer", "text", "vae")  # the keys of a builder's sizes that are made at random


def build_qwen3_pipeline(out_dir: str | Path, sizes: dict, tiny_sizes: dict, seed: int, torch_dtype,
                         make: dict[str, Callable], assemble: Callable, finish: dict[str, Callable] | None = None):
    """Build a random-weight pipeline, save it as a diffusers folder and return it (None for a
    full-size one made in `torch_dtype`).

    `make`: {component folder: function of `sizes` making its module}, in the order torch's
    random draws make them (transformer, text_encoder, vae); `finish`: {folder: function(module,
    seed)} applied after the weights are made (FLUX.2's VAE statistics); `assemble(modules,
    tokenizer, scheduler, sizes)` makes the pipeline.  `sizes` being `tiny_sizes` spreads the
    weights (random_weights.spread_weights).  A full size in `torch_dtype` saves the small files
    from a stand-in of tiny components, then makes and saves one large component at a time."""
    import functools

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sdcli.convert.random_weights import save_large_components, spread_weights

    out_dir = Path(out_dir)
    finish = finish or {}
    if sizes is not tiny_sizes and torch_dtype is not None:
        stand_in = {**sizes, **{key: tiny_sizes[key] for key in COMPONENTS}}
        build_qwen3_pipeline(out_dir, stand_in, tiny_sizes, seed, None, make, assemble, finish)
        save_large_components(out_dir, {name: functools.partial(made, sizes) for name, made in make.items()},
                              torch_dtype, seed, finish)
        return None
    torch.manual_seed(seed)
    if torch_dtype is not None:
        torch.set_default_dtype(torch_dtype)
    try:
        modules = {name: made(sizes) for name, made in make.items()}
    finally:
        torch.set_default_dtype(torch.float32)
    if sizes is tiny_sizes:
        spread_weights(*modules.values(), seed=seed)
    for name, done in finish.items():
        modules[name] = done(modules[name], seed)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(sizes["scheduler"])
    pipe = assemble(modules, qwen2_tokenizer(), scheduler, sizes)
    pipe.save_pretrained(out_dir)
    check_tokenizer(out_dir / "tokenizer", sizes["text"]["vocab_size"])
    return pipe
