#!/usr/bin/env python3
"""The tokenizer fixture (tests/fixtures/tokenizer) and the paths and helpers every fixture script shares:
a small byte-level BPE in the exact Llama 4 tokenizer.json layout, its tokenizer_config.json and
generation_config.json, and reference encodings by transformers (cases.json). make_fixtures.py runs it
(`python3 tests/tools/make_fixtures.py tokenizer`) and re-exports its names for the other scripts."""

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
