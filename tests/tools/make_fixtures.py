#!/usr/bin/env python3
"""Golden test fixtures for herd (Llama 4 runtime), produced with Hugging Face transformers.

How to run (from the repository root, CPU only, about 30-60 s on 2 cores):

    pip install -r tests/tools/requirements.txt
    python3 tests/tools/make_fixtures.py            # everything
    python3 tests/tools/make_fixtures.py tokenizer  # only some parts: tokenizer scout maverick scout_bf16 guard

Everything is seeded and deterministic: with the pinned versions a rerun rewrites byte-identical
files (checked).  Reference numbers come from transformers==5.24.0 (tests/tools/requirements.txt),
eager attention, models loaded back with from_pretrained from the written directory; the spec the
fixtures follow is docs/llama4.md.  Vocabulary: 1955 base BPE tokens + 93 specials = 2048
(bos <|begin_of_text|> 1955, <|end_of_text|> 1956, <|eom|> 1962, <|eot|> 1963, pad
<|finetune_right_pad|> 1973, <|patch|> 2047).  For each model the script prints the logits std,
the number of distinct greedy ids, the smallest top-1/top-2 margin on the greedy path (the prompt
is the first of a fixed seed sequence whose margin is >= 0.02 in f32 / 0.15 in bf16), whether the
greedy ids (KV-cache path) equal the argmax of a full forward over prompt+greedy, and how much the
logits move when a feature (RoPE scaling, temperature tuning, chunking, QK norm, top-2) is switched off.

What it writes
--------------
tests/fixtures/tokenizer/
    tokenizer.json          small byte-level BPE in the exact Llama 4 tokenizer.json layout
                            (BPE ignore_merges, Split(o200k regex, isolated) + ByteLevel(no prefix,
                            no regex), ByteLevel decoder, TemplateProcessing that prepends
                            <|begin_of_text|>).  Trained on tests/tools/tokenizer_corpus.txt
                            (English text from the Python stdlib docstrings + a few multilingual
                            lines; the file is generated once if missing and then reused, so that
                            the tokenizer does not depend on the Python version).
                            The 93 Llama 4 special tokens (<|begin_of_text|> ... <|patch|>) follow
                            the base vocab in Meta's order: id = BASE_VOCAB + offset, where Meta
                            has 200000 + offset.
    tokenizer_config.json   real Llama-4-Scout-17B-16E-Instruct chat_template, bos/eos/pad etc.
    generation_config.json  bos / eos list / do_sample / temperature 0.6 / top_p 0.9
    cases.json              reference encodings (transformers AutoTokenizer) of 17 strings and 6
                            rendered + tokenized chat conversations (system, multi-turn, list content
                            with an image item, tools in the user message, tool call + tool result,
                            tools in the system message + ipython role).
tests/fixtures/<name>/      tiny random Llama 4 checkpoints, exactly as transformers saves them
                            (config.json, model*.safetensors, generation_config.json with the real-style
                            bos/eos list), plus tokenizer.json + tokenizer_config.json and
    reference.safetensors   input_ids i64 [B,T]; logits f32 [B,T,V] (full forward, no cache);
                            greedy_ids i64 [B,N] (generate(do_sample=False), N new tokens, no eos)
    reference.json          what the fixture covers, B, T, N, checks that were run
  scout       Llama4ForCausalLM, flat llama4_text config, f32, hidden 32, 4 heads x 16 (q/o not square),
              2 kv heads, 8 layers: all-MoE (4 experts, top-1), QK norm,
              NoPE layers 3,7 (default interval), chunked attention C=8 with T=20 and N=12,
              attention temperature tuning active (floor_scale 4), llama3 RoPE scaling with a
              non-empty smooth band, non-unit RMSNorm weights.  Also config.published.json (the
              same config in the dialect of Meta's published config.json files; transformers 5.24
              refuses its `attn_temperature_tuning: 4`, so it is verified with that read as true).
  maverick    Llama4ForConditionalGeneration (tiny vision tower included), f32, sharded into
              several model-0000i-of-0000n.safetensors + index; dense even layers with
              intermediate_size_mlp != intermediate_size, MoE odd layers with 8 experts and
              top-2 routing, no QK norm, plain RoPE, C=8.
  scout_bf16  the scout config stored in bfloat16; reference computed by transformers in bf16.
  guard       dense Llama-Guard-4-like model (moe_layers [], num_local_experts 0,
              attention_chunk_size null -> every layer global, QK norm on), hidden 64 = 4 x 16,
              Llama4ForConditionalGeneration with a tiny vision tower.
The image fixtures (tests/fixtures/vision) are made by tests/tools/make_vision_fixtures.py.
The built-in demo model (native/demo) is trained, not random: tests/tools/train_demo.py makes it and
its reference (tests/fixtures/demo), with the tokenizer and checkpoint helpers of this file.
"""

import codecs
import contextlib
import copy
import importlib
import inspect
import io
import json
import math
import os
import shutil
import sys
import tempfile
import warnings

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.path.join(ROOT, "tests", "tools")
FIX = os.path.join(ROOT, "tests", "fixtures")
TOK_DIR = os.path.join(FIX, "tokenizer")
DEMO_DIR = os.path.join(ROOT, "native", "demo")
CORPUS = os.path.join(TOOLS, "tokenizer_corpus.txt")

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

TOTAL_VOCAB = 2048  # base BPE tokens + 93 special tokens; == vocab_size of every model fixture

O200K_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama4_special_tokens():
    """The first 93 Llama 4 special tokens, in Meta's order (Meta id = 200000 + index)."""
    t = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
         "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>"]
    t += [f"<|text_post_train_reserved_special_token_{i}|>" for i in range(0, 6)]
    t += ["<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>"]
    t += [f"<|text_post_train_reserved_special_token_{i}|>" for i in range(8, 69)]
    t += ["<|image_start|>", "<|image_end|>",
          "<|vision_reserved_special_token_0|>", "<|vision_reserved_special_token_1|>",
          "<|tile_x_separator|>", "<|tile_y_separator|>"]
    t += [f"<|vision_reserved_special_token_{i}|>" for i in range(2, 6)]
    t += ["<|image|>", "<|vision_reserved_special_token_6|>", "<|patch|>"]
    assert len(t) == 93
    # spot checks against the spec table (offsets from 200000)
    assert t[8] == "<|eot|>" and t[18] == "<|finetune_right_pad|>" and t[19].endswith("_8|>")
    assert t[79].endswith("_68|>") and t[80] == "<|image_start|>" and t[84] == "<|tile_x_separator|>"
    assert t[90] == "<|image|>" and t[92] == "<|patch|>"
    return t


SPECIALS = llama4_special_tokens()
BASE_VOCAB = TOTAL_VOCAB - len(SPECIALS)


def special_id(tok, base=BASE_VOCAB):
    """The id of a special token in a vocabulary of `base` BPE tokens followed by the 93 specials."""
    return base + SPECIALS.index(tok)


BOS_ID = special_id("<|begin_of_text|>")
EOT_ID = special_id("<|eot|>")
EOS_IDS = [special_id("<|end_of_text|>"), special_id("<|eom|>"), special_id("<|eot|>")]
PAD_ID = special_id("<|finetune_right_pad|>")

# The chat template shipped in meta-llama/Llama-4-Scout-17B-16E-Instruct tokenizer_config.json
# Byte-identical to transformers' models/llama4/processing_llama4.py `chat_template` (asserted below): the
# newlines inside the Jinja string literals are real newline characters (a copy with Jinja `\n` escapes
# renders identically).
LLAMA4_CHAT_TEMPLATE = (
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n"
    "{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n"
    "{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}    \n    {%- if messages[0]['content'] is string %}\n"
    "        {%- set system_message = messages[0]['content']|trim %}\n    {%- else %}\n"
    "        {#- FIXME: The processor requires an array, always. #}\n"
    "        {%- set system_message = messages[0]['content'][0]['text']|trim %}\n    {%- endif %}\n"
    "    {%- set messages = messages[1:] %}\n    {%- set user_supplied_system_message = true %}\n{%- else %}\n"
    "    {%- set system_message = \"\" %}\n    {%- set user_supplied_system_message = false %}\n{%- endif %}\n\n"
    "{#- System message if the user supplied one #}\n{%- if user_supplied_system_message %}\n"
    "    {{- \"<|header_start|>system<|header_end|>\n\n\" }}\n    {%- if tools is not none %}\n"
    "        {{- \"Environment: ipython\n\" }}\n    {%- endif %}\n"
    "    {%- if tools is not none and not tools_in_user_message %}\n"
    "        {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n"
    "        {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n"
    "        {{- \"Do not use variables.\n\n\" }}\n        {%- for t in tools %}\n"
    "            {{- t | tojson(indent=4) }}\n            {{- \"\n\n\" }}\n        {%- endfor %}\n    {%- endif %}\n"
    "    {{- system_message }}\n    {{- \"<|eot|>\" }}\n{%- endif %}\n\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n"
    "{%- endif %}\n    {{- '<|header_start|>user<|header_end|>\n\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\n\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\n\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\n\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot|>\"}}\n{%- endif %}\n\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "    {{- '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}\n"
    "        {%- if message['content'] is string %}\n            {{- message['content'] }}\n        {%- else %}\n"
    "            {%- for content in message['content'] %}\n                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {{- \"<|eot|>\" }}\n"
    "    {%- elif 'tool_calls' in message and message.tool_calls|length > 0 %}\n"
    "       {{- '<|header_start|>assistant<|header_end|>\n\n' -}}\n       {{- '<|python_start|>' }}\n"
    "        {%- if message['content'] is string %}\n            {{- message['content'] }}\n        {%- else %}\n"
    "            {%- for content in message['content'] %}\n                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n       {{- '<|python_end|>' }}\n        {%- for tool_call in message.tool_calls %}\n"
    "           {{- '{\"name\": \"' + tool_call.function.name + '\", ' }}\n           {{- '\"parameters\": ' }}\n"
    "           {{- tool_call.function.arguments | tojson }}\n           {{- \"}\" }}\n        {%- endfor %}\n"
    "       {{- \"<|eot|>\" }}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|header_start|>ipython<|header_end|>\n\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n"
    "        {%- endif %}\n        {{- \"<|eot|>\" }}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|header_start|>assistant<|header_end|>\n\n' }}\n{%- endif %}\n"
)

MULTILINGUAL = """\
Voilà un café crème très léger, s'il vous plaît. Où est la bibliothèque ? Ça coûte 12,50 €.
Äpfel, Öl und Übermaß: Straße, Grüße, schön, größer. Ich möchte gern einen Kaffee.
¿Dónde está la estación? El niño comió una piña. Mañana será otro día, señor.
Olá, coração! A situação não é fácil, mas vamos à praia amanhã.
Привет, как дела? Москва, Санкт-Петербург. Спасибо большое!
Γειά σου κόσμε. Καλημέρα! Ευχαριστώ πολύ.
こんにちは世界。東京は日本の首都です。ありがとうございます。
你好，世界。我喜欢学习中文。今天天气很好。北京是中国的首都。
안녕하세요. 만나서 반갑습니다. 감사합니다.
مرحبا بالعالم. شكرا جزيلا.
नमस्ते दुनिया। आप कैसे हैं?
Emoji: 😀 😃 🎉 🚀 👍 ❤️ 🙂 — “quotes”, ‘single’, … ellipsis, – dash.
I'm sure you're right; we'll see, they've gone, she'd know, it's John's, DON'T SHOUT, I'M HERE.
Numbers: 0 1 2 3 42 123 2024 12345678 3.14159 1,000,000 0x1F 1e-5 -7.5%.
"""


def build_corpus():
    """English text from stdlib docstrings (Python-version dependent, hence cached in a file)."""
    import this  # noqa: F401  (prints the Zen when first imported; silenced below)
    parts = [codecs.decode(sys.modules["this"].s, "rot13"), MULTILINGUAL]
    mods = ["json", "collections", "itertools", "functools", "re", "os", "pathlib", "argparse",
            "dataclasses", "enum", "string", "textwrap", "unittest", "logging", "csv", "datetime",
            "decimal", "fractions", "statistics", "random", "heapq", "bisect", "contextlib", "io",
            "shutil", "subprocess", "threading", "queue", "socket", "pickle", "copy", "pprint",
            "difflib", "tempfile", "glob", "fnmatch", "configparser", "operator", "math", "types",
            "warnings", "traceback", "calendar", "base64", "struct", "zipfile", "tarfile", "gzip",
            "hashlib", "sqlite3", "html", "doctest", "timeit", "shlex", "sched", "uuid"]
    for m in mods:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                mod = importlib.import_module(m)
        except Exception:
            continue
        if mod.__doc__:
            parts.append(mod.__doc__)
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            d = getattr(obj, "__doc__", None)
            if isinstance(d, str):
                parts.append(d)
    text = "\n\n".join(p.strip("\n") for p in parts)
    return text[:160_000]


def load_corpus():
    if not os.path.exists(CORPUS):
        with contextlib.redirect_stdout(io.StringIO()):
            text = build_corpus()
        with open(CORPUS, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"wrote {CORPUS} ({len(text)} chars)")
    with open(CORPUS, encoding="utf-8", newline="") as f:
        return f.read()


def train_tokenizer():
    return train_bpe(load_corpus().split("\n"), TOTAL_VOCAB)


def train_bpe(lines, total_vocab):
    """A byte-level BPE in the exact Llama 4 tokenizer.json layout, trained on `lines`: total_vocab - 93 BPE
    tokens, then the 93 Llama 4 special tokens in Meta's order."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    base_vocab = total_vocab - len(SPECIALS)
    bos_id = special_id("<|begin_of_text|>", base_vocab)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=base_vocab, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    # keep the line breaks: train on lines with their "\n" (whitespace pre-tokens need them)
    tok.train_from_iterator([l + "\n" for l in lines], trainer=trainer)
    assert tok.get_vocab_size() == base_vocab, (tok.get_vocab_size(), base_vocab)

    # Rebuild from JSON with the Llama 4 options (ignore_merges) and pipeline pieces.
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    j["model"]["byte_fallback"] = False
    j["model"]["fuse_unk"] = False
    j["model"]["unk_token"] = None
    tok = Tokenizer.from_str(json.dumps(j))
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False) for s in SPECIALS])
    assert tok.get_vocab_size() == total_vocab
    assert tok.token_to_id("<|begin_of_text|>") == base_vocab and tok.token_to_id("<|patch|>") == total_vocab - 1
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)]),
    ])
    return tok


def tokenizer_config(base=BASE_VOCAB):
    added = {}
    for s in SPECIALS:
        added[str(special_id(s, base))] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": True}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "chat_template": LLAMA4_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|eot|>",
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 10485760,
        "pad_token": "<|finetune_right_pad|>",
        "padding_side": "left",
        "processor_class": "Llama4Processor",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def generation_config_dict(base=BASE_VOCAB):
    eos = [special_id(t, base) for t in ("<|end_of_text|>", "<|eom|>", "<|eot|>")]
    return {"bos_token_id": special_id("<|begin_of_text|>", base), "do_sample": True, "eos_token_id": eos,
            "pad_token_id": special_id("<|finetune_right_pad|>", base), "temperature": 0.6, "top_p": 0.9}


TOKENIZER_CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "12345678",
    "Numbers 3.14159 and 1,000,000 and 2024-11-05",
    "  leading spaces and    runs   of whitespace\t\ttabs  ",
    "line one\r\nline two\n\nline four\n",
    "I'm sure you're right, we'll see; she'd know. DON'T SHOUT, I'M HERE.",
    "Voilà: café crème, naïve façade, Straße, Ñandú.",
    "你好，世界。東京は日本の首都です。",
    "Emoji 😀🎉 🚀👍🏽 ❤️",
    "<|eot|> is the end-of-turn token; <|begin_of_text|>starts text",
    "def f(x):\n    return x ** 2  # square\n",
    "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
    "a",
    "",
    "    \n\n  \t",
    "mixedCASE camelCaseWord HTTPServer XMLHttpRequest",
]

TOOLS_EXAMPLE = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]

CHAT_CASES = [
    {"name": "system_user", "tools": None, "add_generation_prompt": True,
     "messages": [{"role": "system", "content": "  You are a helpful assistant.  "},
                  {"role": "user", "content": "What is the capital of France?"}]},
    {"name": "multi_turn", "tools": None, "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": "Hello! How can I help you today?"},
                  {"role": "user", "content": "Tell me a joke about cats.\n"}]},
    {"name": "list_content_no_gen_prompt", "tools": None, "add_generation_prompt": False,
     "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": "Describe this image."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "A cat on a mat."}]}]},
    {"name": "tools_in_user_message", "tools": TOOLS_EXAMPLE, "add_generation_prompt": True,
     "messages": [{"role": "system", "content": "You are a weather bot."},
                  {"role": "user", "content": "  What's the weather in Paris?  "}]},
    {"name": "tool_call_and_ipython", "tools": TOOLS_EXAMPLE, "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                    "arguments": {"city": "Oslo", "unit": "celsius"}}}]},
                  {"role": "tool", "content": "{\"temperature\": -3, \"sky\": \"snow\"}"},
                  {"role": "user", "content": "Thanks! And in Rome?"}]},
    {"name": "tools_in_system_ipython_role", "tools": TOOLS_EXAMPLE, "add_generation_prompt": False,
     "tools_in_user_message": False,
     "messages": [{"role": "system", "content": "Use tools when needed."},
                  {"role": "user", "content": "Weather in Lima?"},
                  {"role": "ipython", "content": "sunny, 24C"},
                  {"role": "assistant", "content": "It is sunny and 24°C in Lima."}]},
]

CHAT_DATE_STRING = "26 Jul 2024"


def make_tokenizer():
    from transformers import AutoTokenizer
    from transformers.models.llama4 import processing_llama4

    assert processing_llama4.chat_template == LLAMA4_CHAT_TEMPLATE, "chat template differs from transformers'"
    os.makedirs(TOK_DIR, exist_ok=True)
    tok = train_tokenizer()
    tok.save(os.path.join(TOK_DIR, "tokenizer.json"), pretty=False)
    write_json(os.path.join(TOK_DIR, "tokenizer_config.json"), tokenizer_config())
    write_json(os.path.join(TOK_DIR, "generation_config.json"), generation_config_dict())

    hf = AutoTokenizer.from_pretrained(TOK_DIR)
    assert len(hf) == TOTAL_VOCAB, len(hf)
    assert hf.bos_token_id == BOS_ID and hf.eos_token_id == EOT_ID and hf.pad_token_id == PAD_ID
    cases = []
    for text in TOKENIZER_CASES:
        ids0 = hf.encode(text, add_special_tokens=False)
        ids1 = hf.encode(text, add_special_tokens=True)
        # the raw tokenizers library must agree with transformers
        assert tok.encode(text, add_special_tokens=False).ids == ids0, text
        assert tok.encode(text, add_special_tokens=True).ids == ids1, text
        assert ids1 == [BOS_ID] + ids0
        ids_split = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        cases.append({"text": text, "ids_no_special": ids0, "ids_with_special": ids1,
                      "ids_split_special_tokens": ids_split,
                      "tokens_no_special": hf.convert_ids_to_tokens(ids0),
                      "decoded": hf.decode(ids0, skip_special_tokens=False)})
    chats = []
    for c in CHAT_CASES:
        kw = {"date_string": CHAT_DATE_STRING}
        if "tools_in_user_message" in c:
            kw["tools_in_user_message"] = c["tools_in_user_message"]
        rendered = hf.apply_chat_template(copy.deepcopy(c["messages"]), tools=c["tools"], tokenize=False,
                                          add_generation_prompt=c["add_generation_prompt"], **kw)
        ids = hf.encode(rendered, add_special_tokens=False)
        assert ids[0] == BOS_ID and ids[1] != BOS_ID
        chats.append({"name": c["name"], "messages": c["messages"], "tools": c["tools"],
                      "add_generation_prompt": c["add_generation_prompt"],
                      "template_kwargs": kw, "rendered": rendered, "ids": ids})
    special = {s: special_id(s) for s in SPECIALS}
    out = {
        "about": "Reference encodings by transformers AutoTokenizer on tests/fixtures/tokenizer. "
                 "ids_no_special = encode(add_special_tokens=False); ids_with_special = encode(add_special_tokens=True) "
                 "(prepends <|begin_of_text|>); both parse special-token strings found in the text as special tokens "
                 "(transformers' default); ids_split_special_tokens = the same text with split_special_tokens=True "
                 "(special-token strings tokenized as plain text, no BOS); decoded = decode(ids_no_special). Chat: rendered = "
                 "apply_chat_template(messages, tools=tools, add_generation_prompt=..., tokenize=False, **template_kwargs) "
                 "with bos_token '<|begin_of_text|>' from tokenizer_config.json; ids = encode(rendered, "
                 "add_special_tokens=False) (the template already writes BOS). date_string is passed but never rendered.",
        "transformers_version": __import__("transformers").__version__,
        "tokenizers_version": __import__("tokenizers").__version__,
        "vocab_size": TOTAL_VOCAB,
        "base_vocab_size": BASE_VOCAB,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOT_ID,
        "eos_token_ids_generation": EOS_IDS,
        "pad_token_id": PAD_ID,
        "special_tokens": special,
        "cases": cases,
        "chats": chats,
    }
    write_json(os.path.join(TOK_DIR, "cases.json"), out, indent=1)
    print(f"tokenizer: vocab {TOTAL_VOCAB} (base {BASE_VOCAB}), bos {BOS_ID}, eot {EOT_ID}, eos {EOS_IDS}, "
          f"pad {PAD_ID}, <|patch|> {special_id('<|patch|>')}; {len(cases)} strings, {len(chats)} chats")


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------------

def text_config_dict(**over):
    """Common tiny llama4_text settings (vocab = tokenizer fixture; ids like the real checkpoints)."""
    d = dict(vocab_size=TOTAL_VOCAB, hidden_size=32, intermediate_size=16, intermediate_size_mlp=48,
             num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             hidden_act="silu", max_position_embeddings=4096, initializer_range=0.1, rms_norm_eps=1e-5,
             num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True,
             attention_chunk_size=8, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
             bos_token_id=BOS_ID, eos_token_id=list(EOS_IDS), pad_token_id=PAD_ID, tie_word_embeddings=False)
    d.update(over)
    return d


TINY_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                   image_size=28, patch_size=14, num_channels=3, norm_eps=1e-5, hidden_act="gelu",
                   pixel_shuffle_ratio=0.5, projector_input_dim=32, projector_output_dim=32, vision_output_dim=32,
                   initializer_range=0.1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

# Scout-like llama3 RoPE scaling whose smooth band is non-empty for head_dim 16.  A small theta (500) keeps
# the scaled pairs rotating noticeably within 32 positions: base wavelengths 2*pi*500^(2j/16) =
# 6.3, 13.3, 28.1, 59.4, 125.7, 265.8, 562.0, 1188.5; band [O/high_freq_factor, O/low_freq_factor] = [96, 384]
# holds j=4 (s = 0.685) and j=5 (s = 0.148) -> smooth; j<=3 unchanged; j=6,7 divided by factor 8.
SCOUT_ROPE = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 384}


def scout_text_config():
    return text_config_dict(num_hidden_layers=8, num_local_experts=4, num_experts_per_tok=1,
                            interleave_moe_layer_step=1, use_qk_norm=True, attention_chunk_size=8,
                            attn_temperature_tuning=True, floor_scale=4, attn_scale=0.1,
                            rope_parameters=dict(SCOUT_ROPE))


EMBED_STD = 1.0   # token embeddings ~ N(0, 1): the current token matters, greedy output is not constant
LM_HEAD_STD = 0.3  # logits std ~ 0.3 * sqrt(hidden) * norm weights: clearly non-flat


def perturb_weights(model, seed):
    """Everything else keeps transformers' init (normal, std = initializer_range).  RMSNorm weights are 1 at
    init: make them non-trivial so that a runtime ignoring them fails; rescale embeddings and lm_head."""
    import torch
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "vision" in name:
                continue
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(EMBED_STD * torch.randn(p.shape, generator=g))
            elif name.endswith("lm_head.weight"):
                p.copy_(LM_HEAD_STD * torch.randn(p.shape, generator=g))


def new_model(cls, config, seed):
    import torch
    torch.manual_seed(seed)
    model = cls(config)
    perturb_weights(model, seed)
    return model.eval()


def patch_transformers():
    # transformers 5.24.0: Llama4ForConditionalGeneration.forward reads `image_outputs` from the inner
    # MoeCausalLMOutputWithPast, which has no such field (AttributeError). A class default of None fixes it
    # without changing any computation (shared/RECIPES.md).
    from transformers.modeling_outputs import MoeCausalLMOutputWithPast
    if not hasattr(MoeCausalLMOutputWithPast, "image_outputs"):
        MoeCausalLMOutputWithPast.image_outputs = None


def load(cls, path, dtype):
    model = cls.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return model.eval()


MIN_GREEDY_GAP = {"float32": 0.02, "bfloat16": 0.15}


def run_reference(model, input_ids, n_new):
    """Full-forward logits (no cache) + greedy continuation through the KV cache + consistency checks."""
    import torch
    from transformers import GenerationConfig
    # eos_token_id None everywhere (a None in a passed GenerationConfig would be filled in from the
    # model's generation_config, whose eos list min_new_tokens would then mask): nothing can stop
    # generation early and no logits processor touches the scores.
    gc = GenerationConfig(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None,
                          pad_token_id=PAD_ID, bos_token_id=BOS_ID, use_cache=True)
    saved_gc, model.generation_config = model.generation_config, gc
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gc,
                                 output_logits=True, return_dict_in_generate=True)
            seq = out.sequences
            t = input_ids.shape[1]
            greedy = seq[:, t:]
            assert greedy.shape[1] == n_new
            step_logits = torch.stack(out.logits, dim=1)  # logits the cached decode produced
            assert torch.equal(step_logits.argmax(-1), greedy), "generate did not pick the argmax"
            full = model(input_ids=seq, use_cache=False).logits[:, t - 1:t - 1 + n_new]
            agree = int((full.argmax(-1) == greedy).sum())
            cache_vs_full = float((step_logits.float() - full.float()).abs().max())
    finally:
        model.generation_config = saved_gc
    return logits.float(), greedy, agree, full.float(), cache_vs_full


def copy_tokenizer_files(dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOK_DIR, f), os.path.join(dst, f))


def clean_dir(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def save_checkpoint(model, out, dtype_name, max_shard_size=None, text_only=False):
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(**generation_config_dict())
    kw = {}
    if max_shard_size:
        kw["max_shard_size"] = max_shard_size
    if text_only:
        kw["state_dict"] = {k: v for k, v in model.state_dict().items() if k.startswith("language_model.")}
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(out, **kw)
    copy_tokenizer_files(out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg.get("dtype", dtype_name) == dtype_name, cfg.get("dtype")


def random_prompt(b, t, seed):
    import torch
    g = torch.Generator().manual_seed(seed + 7)
    return torch.randint(0, BASE_VOCAB, (b, t), generator=g, dtype=torch.int64)


def text_config_of(model):
    c = model.config
    return getattr(c, "text_config", None) or c


def describe_layers(tc):
    return {"moe_layers": list(tc.moe_layers), "layer_types": list(tc.layer_types),
            "no_rope_layers (1 = RoPE)": list(tc.no_rope_layers)}


def make_model_fixture(name, cls_name, config, seed, B, T, N, dtype_name, covers, max_shard_size=None,
                       extra=None, post_save=None, variants=None):
    import torch
    import transformers
    from safetensors.torch import save_file
    patch_transformers()
    cls = getattr(transformers, cls_name)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    out = os.path.join(FIX, name)
    clean_dir(out)
    model = new_model(cls, config, seed)
    if dtype != torch.float32:
        model = model.to(dtype)
    save_checkpoint(model, out, dtype_name, max_shard_size=max_shard_size)
    # reference numbers come from the checkpoint as transformers loads it from disk
    ref_model = load(cls, out, dtype)
    # Pick the first prompt (deterministic sequence of seeds) whose greedy decisions all have a clear
    # top-1/top-2 margin, so that a runtime with different rounding still reproduces greedy_ids exactly.
    min_gap = MIN_GREEDY_GAP[dtype_name]
    best = None
    for k in range(40):
        input_ids = random_prompt(B, T, seed * 1000 + k)
        logits, greedy, agree, full, cache_vs_full = run_reference(ref_model, input_ids, N)
        top2 = full.topk(2, dim=-1).values
        gap = float((top2[..., 0] - top2[..., 1]).min())
        if best is None or gap > best[0]:
            best = (gap, k, input_ids, logits, greedy, agree, cache_vs_full)
        if gap >= min_gap and agree == B * N:
            break
    gap, k, input_ids, logits, greedy, agree, cache_vs_full = best
    if dtype == torch.float32:  # the in-memory model agrees with the reloaded one
        with torch.no_grad():
            model.set_attn_implementation("eager")
            l2 = model(input_ids=input_ids, use_cache=False).logits
        assert torch.equal(l2, ref_model(input_ids=input_ids, use_cache=False).logits)
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous(), "greedy_ids": greedy.contiguous()},
              os.path.join(out, "reference.safetensors"))
    tc = text_config_of(ref_model)
    std = float(logits.std())
    distinct = len(set(greedy.flatten().tolist()))
    checks = {"logits_std": round(std, 4), "distinct_greedy_ids": distinct,
              "greedy_min_top1_top2_margin": round(gap, 4), "prompt_seed_index": k,
              "greedy_matches_argmax_of_full_forward": f"{agree}/{B * N}",
              "max_abs_diff_cached_decode_logits_vs_full_forward": cache_vs_full}
    rot = ref_model.language_model.model.rotary_emb if hasattr(ref_model, "language_model") else ref_model.model.rotary_emb
    info = {
        "fixture": name,
        "architecture": cls_name,
        "dtype": dtype_name,
        "B": B, "T": T, "N": N,
        "vocab_size": TOTAL_VOCAB,
        "seed": seed,
        "covers": covers,
        "layers": describe_layers(tc),
        "rope_parameters": dict(tc.rope_parameters),
        "rope_inv_freq_hf": [float(x) for x in rot.inv_freq.float()],
        "tensors": {
            "input_ids": f"int64 [{B},{T}], random ids from the base vocab (< {BASE_VOCAB}), equal-length rows",
            "logits": f"float32 [{B},{T},{TOTAL_VOCAB}], model(input_ids, use_cache=False).logits"
                      + (" computed in bf16 then upcast" if dtype_name == "bfloat16" else ""),
            "greedy_ids": f"int64 [{B},{N}], the N new tokens of generate(do_sample=False, max_new_tokens={N}, "
                          "eos_token_id=None) (KV cache path)",
        },
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, "
                     "attn_implementation='eager', loaded with from_pretrained from this directory",
        "checks": checks,
    }
    usage = expert_usage(ref_model, input_ids)
    if usage:
        info["expert_usage_prompt_tokens_per_moe_layer"] = usage
    if variants:
        sens = sensitivity(out, cls, dtype, input_ids, logits, variants)
        info["checks"]["max_abs_logit_change_when_switched_off"] = sens
        print(f"  {name}: max |logit change| when switching off: "
              + ", ".join(f"{k} {v:.3g}" for k, v in sens.items()))
    if extra:
        info.update(extra(ref_model) if callable(extra) else extra)
    if post_save:
        info.update(post_save(out, cls, dtype, input_ids, logits))
    write_json(os.path.join(out, "reference.json"), info)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: logits std {std:.3f}, distinct greedy ids {distinct}/{B * N}, greedy margin {gap:.3f}, "
          f"greedy == argmax(full forward) {agree}/{B * N} (max |cached - full| {cache_vs_full:.1e}), dir {size / 1e6:.2f} MB")
    if agree != B * N:
        print(f"  WARNING {name}: cached greedy path disagrees with the full forward at {B * N - agree} positions")
    return info


def temperature_scales(tc, n):
    return [1.0 + tc.attn_scale * math.log1p(math.floor((p + 1) / tc.floor_scale)) for p in range(n)]


def rope_bands(tc):
    rp = tc.rope_parameters
    if rp.get("rope_type") != "llama3":
        return {}
    d = tc.head_dim
    O, lf, hf = rp["original_max_position_embeddings"], rp["low_freq_factor"], rp["high_freq_factor"]
    bands = []
    for j in range(d // 2):
        wl = 2 * math.pi * rp["rope_theta"] ** (2 * j / d)
        bands.append("unchanged" if wl < O / hf else ("divided by factor" if wl > O / lf else "smooth"))
    return {"llama3_bands_per_pair": bands}


def published_config(cfg):
    """The same config in the dialect of Meta's published config.json files."""
    pub = {}
    for k, v in cfg.items():
        if k in ("dtype", "rope_parameters", "moe_layers", "layer_types", "no_rope_layer_interval"):
            continue
        pub[k] = v
    rp = cfg["rope_parameters"]
    pub["rope_theta"] = rp["rope_theta"]
    pub["rope_scaling"] = {k: rp[k] for k in ("factor", "high_freq_factor", "low_freq_factor",
                                              "original_max_position_embeddings")}
    pub["rope_scaling"]["rope_type"] = rp["rope_type"]
    pub["no_rope_layers"] = []
    pub["attn_temperature_tuning"] = 4
    pub["torch_dtype"] = cfg["dtype"]
    pub["for_llm_compressor"] = False
    pub["transformers_version"] = "4.51.0.dev0"
    return dict(sorted(pub.items()))


def scout_post_save(out, cls, dtype, input_ids, logits):
    import torch
    cfg = json.load(open(os.path.join(out, "config.json")))
    pub = published_config(cfg)
    write_json(os.path.join(out, "config.published.json"), pub)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(os.path.join(out, "model.safetensors"), os.path.join(tmp, "model.safetensors"))
        write_json(os.path.join(tmp, "config.json"), pub)
        try:
            m = load(cls, tmp, dtype)
            int_flag_note = "transformers accepted attn_temperature_tuning: 4 as is"
        except Exception as e:  # transformers 5.24's strict config dataclass wants a bool here
            int_flag_note = (f"transformers {__import__('transformers').__version__} refuses attn_temperature_tuning: 4 "
                             f"({type(e).__name__}: {str(e).splitlines()[-1].strip()}); verified with it read as "
                             "bool(4) = true, every other field as written")
            write_json(os.path.join(tmp, "config.json"), dict(pub, attn_temperature_tuning=bool(pub["attn_temperature_tuning"])))
            m = load(cls, tmp, dtype)
        print(f"  scout: {int_flag_note}")
        with torch.no_grad():
            l2 = m(input_ids=input_ids, use_cache=False).logits.float()
        same = bool(torch.equal(l2, logits))
        tc = m.config
        derived = {"moe_layers": list(tc.moe_layers), "layer_types": list(tc.layer_types),
                   "no_rope_layers": list(tc.no_rope_layers), "rope_parameters": dict(tc.rope_parameters),
                   "attn_temperature_tuning": tc.attn_temperature_tuning}
    assert same, "published-dialect config gives different logits"
    print(f"  scout: config.published.json loads to identical logits: {same}")
    return {"config_published": {"file": "config.published.json",
                                 "what": "same model config in Meta's published dialect (rope_theta + rope_scaling, "
                                         "torch_dtype, no_rope_layers [], no moe_layers/layer_types, "
                                         "attn_temperature_tuning 4, extra field for_llm_compressor)",
                                 "identical_logits_when_loaded_by_transformers": same,
                                 "note": int_flag_note,
                                 "transformers_derives": derived}}


def expert_usage(model, input_ids):
    """Tokens routed to each expert, per MoE layer, in the prompt forward (shows routing is not degenerate)."""
    import torch
    from transformers.models.llama4.modeling_llama4 import Llama4Router
    usage, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, Llama4Router):
            layer = int(name.split("layers.")[1].split(".")[0])

            def hook(m, inp, out, layer=layer):
                idx = out[1].topk(m.top_k, dim=-1).indices.flatten()
                usage[layer] = torch.bincount(idx, minlength=m.num_experts).tolist()
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    for h in hooks:
        h.remove()
    return {str(k): usage[k] for k in sorted(usage)}


def sensitivity(out, cls, dtype, input_ids, logits, variants):
    """max |logits - logits with one feature switched off|: proves the fixture exercises that feature."""
    import torch
    res = {}
    for label, mutate in variants.items():
        cfg = cls.config_class.from_pretrained(out)
        mutate(getattr(cfg, "text_config", None) or cfg)
        m = cls.from_pretrained(out, config=cfg, dtype=dtype, attn_implementation="eager").eval()
        with torch.no_grad():
            l2 = m(input_ids=input_ids, use_cache=False).logits.float()
        res[label] = float((l2 - logits).abs().max())
    return res


def no_chunking(tc):
    tc.attention_chunk_size = None
    tc.layer_types = ["full_attention"] * tc.num_hidden_layers


def plain_rope(tc):
    tc.rope_parameters = {"rope_type": "default", "rope_theta": tc.rope_parameters["rope_theta"]}


def no_temperature(tc):
    tc.attn_temperature_tuning = False


def no_qk_norm(tc):
    tc.use_qk_norm = False


def top1(tc):
    tc.num_experts_per_tok = 1


def make_scout():
    from transformers import Llama4TextConfig
    cfg = Llama4TextConfig(**scout_text_config())
    base = {}
    # how much the llama3 scaling matters at these lengths (vs plain RoPE with the same theta)
    return make_model_fixture(
        "scout", "Llama4ForCausalLM", cfg, seed=1, B=2, T=20, N=12, dtype_name="float32",
        covers=[
            "Llama4ForCausalLM, flat llama4_text config, single model.safetensors, names model.* / lm_head.weight",
            "all layers MoE (interleave_moe_layer_step 1), 4 experts, top-1 sigmoid routing on the expert input, shared expert",
            "expert width intermediate_size 16 (intermediate_size_mlp 48 present but unused)",
            "hidden 32 with 4 heads x head_dim 16 = 64 (q/o projections are not square), GQA 4 q heads / 2 kv heads",
            "use_qk_norm on RoPE layers; NoPE layers 3 and 7 from the default interval (no_rope_layers derived)",
            "chunked attention C=8 on RoPE layers: prompt T=20 spans 3 chunks, decode positions 20..31 cross into chunk 3",
            "attention temperature tuning on NoPE layers with floor_scale 4 (scale > 1 from position 3 on), attn_scale 0.1",
            "llama3 RoPE scaling, theta 500, factor 8, low 1, high 4, original_max_position_embeddings 384: "
            "pairs 0-3 unchanged, 4-5 in the smooth band, 6-7 divided by 8",
            "interleaved (complex) RoPE pairs, RMSNorm weights randomised (not 1), untied lm_head, batch B=2",
            "config.published.json: the same config in the published-checkpoint dialect",
        ],
        extra=lambda m: {"nope_query_temperature_per_position": temperature_scales(m.config, 32), **rope_bands(m.config)},
        post_save=scout_post_save,
        variants={"llama3_rope_scaling": plain_rope, "attn_temperature_tuning": no_temperature,
                  "chunked_attention": no_chunking, "qk_norm": no_qk_norm})


def make_scout_bf16():
    from transformers import Llama4TextConfig
    cfg = Llama4TextConfig(**scout_text_config())
    return make_model_fixture(
        "scout_bf16", "Llama4ForCausalLM", cfg, seed=1, B=1, T=16, N=8, dtype_name="bfloat16",
        covers=[
            "the scout config and the scout weights (same seed) rounded to bfloat16, stored as bf16 (dtype bfloat16)",
            "reference logits computed by transformers in bf16 (eager attention, no f32 softmax), upcast to f32: "
            "expect ~1e-2 relative noise against an f32-accumulating runtime",
            "B=1, T=16 (2 chunks of 8), N=8",
        ],
        variants={"llama3_rope_scaling": plain_rope, "attn_temperature_tuning": no_temperature,
                  "chunked_attention": no_chunking},
        extra=lambda m: {"nope_query_temperature_per_position": temperature_scales(m.config, 24), **rope_bands(m.config)})


def make_maverick():
    from transformers import Llama4Config
    tc = text_config_dict(num_hidden_layers=8, num_local_experts=8, num_experts_per_tok=2,
                          interleave_moe_layer_step=2, intermediate_size=16, intermediate_size_mlp=48,
                          use_qk_norm=False, attention_chunk_size=8,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cfg = Llama4Config(text_config=tc, vision_config=dict(TINY_VISION), boi_token_index=special_id("<|image_start|>"),
                       eoi_token_index=special_id("<|image_end|>"), image_token_index=special_id("<|patch|>"),
                       tie_word_embeddings=False)
    return make_model_fixture(
        "maverick", "Llama4ForConditionalGeneration", cfg, seed=2, B=2, T=20, N=12, dtype_name="float32",
        max_shard_size="300KB",
        covers=[
            "Llama4ForConditionalGeneration: nested config (text_config + tiny vision_config), tensors "
            "language_model.model.* / language_model.lm_head.weight plus vision_model.* / multi_modal_projector.* "
            "(the runtime ignores the vision tensors)",
            "sharded checkpoint: several model-0000i-of-0000n.safetensors + model.safetensors.index.json",
            "interleave_moe_layer_step 2: dense MLP on even layers (intermediate_size_mlp 48), MoE on odd layers "
            "(8 experts of width intermediate_size 16 + shared expert)",
            "num_experts_per_tok 2: top-2 routing, each selected expert gets its own sigmoid score on its input",
            "use_qk_norm false, plain RoPE (rope_type default, theta 500000), NoPE layers 3 and 7",
            "chunked attention C=8, T=20, N=12; temperature tuning on but inactive (floor_scale 8192)",
            "boi/eoi/image token indices point at this tokenizer's <|image_start|>/<|image_end|>/<|patch|>",
        ],
        extra=lambda m: {"shards": sorted(f for f in os.listdir(os.path.join(FIX, "maverick"))
                                          if f.startswith("model-"))},
        variants={"top2_routing (top-1 instead)": top1, "chunked_attention": no_chunking})


def make_guard():
    from transformers import Llama4Config
    tc = text_config_dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, moe_layers=[], num_local_experts=0, interleave_moe_layer_step=0,
                          intermediate_size=32, intermediate_size_mlp=32, use_qk_norm=True,
                          attention_chunk_size=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cfg = Llama4Config(text_config=tc, vision_config=dict(TINY_VISION), boi_token_index=special_id("<|image_start|>"),
                       eoi_token_index=special_id("<|image_end|>"), image_token_index=special_id("<|patch|>"),
                       tie_word_embeddings=False)
    return make_model_fixture(
        "guard", "Llama4ForConditionalGeneration", cfg, seed=3, B=1, T=16, N=8, dtype_name="float32",
        covers=[
            "Llama-Guard-4-like dense model: moe_layers [] (num_local_experts 0, interleave_moe_layer_step 0), "
            "every layer a dense MLP of width intermediate_size_mlp 32",
            "attention_chunk_size null: every layer full (global) causal attention; NoPE at layer 3 still",
            "use_qk_norm true on RoPE layers, plain RoPE theta 500000",
            "hidden 64 = 4 heads x 16 (square q/o), Llama4ForConditionalGeneration layout with a tiny vision tower, "
            "single model.safetensors",
            "B=1, T=16, N=8",
        ],
        variants={"qk_norm": no_qk_norm})


# --------------------------------------------------------------------------------------------

def main(argv):
    parts = argv or ["tokenizer", "scout", "maverick", "scout_bf16", "guard"]
    if "tokenizer" in parts or not os.path.exists(os.path.join(TOK_DIR, "tokenizer.json")):
        make_tokenizer()
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    makers = {"scout": make_scout, "maverick": make_maverick, "scout_bf16": make_scout_bf16, "guard": make_guard}
    for p in parts:
        if p in makers:
            makers[p]()
        elif p != "tokenizer":
            raise SystemExit(f"unknown part {p!r}; choose from tokenizer {' '.join(makers)}")


if __name__ == "__main__":
    main(sys.argv[1:])
