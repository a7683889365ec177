"""Drives `herd serve` with the official openai client (native/tests/serve.rs runs this).

Usage: openai_client.py BASE_URL API_KEY EXPECTED_GREEDY_TEXT VISION_URL IMAGE EXPECTED_IMAGE_TEXT SCHEMA_DIR
EXPECTED_GREEDY_TEXT is `herd run --chat --temperature 0 --max-tokens 20` on the same prompt; VISION_URL is a
server of a model with a vision tower (no key), and EXPECTED_IMAGE_TEXT `herd run --chat --temperature 0
--max-tokens 8 --image IMAGE --prompt "What is in the picture?"` on that model. SCHEMA_DIR holds the JSON
schemas that `response_format` is tried with: 50 seeded, sampled answers each, checked by the `jsonschema`
package.
"""

import base64
import concurrent.futures
import json
import os
import sys

import jsonschema
import openai

base, key, expected, vision_url, image, expected_image, schema_dir = sys.argv[1:8]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
prompt = [{"role": "user", "content": "Hello! Tell me a story."}]

models = client.models.list()
model = models.data[0].id
assert model == "herd-demo", model

r = client.chat.completions.create(model=model, messages=prompt, max_tokens=20, temperature=0)
assert r.choices[0].message.content == expected, (r.choices[0].message.content, expected)
assert r.choices[0].finish_reason in ("length", "stop"), r.choices[0].finish_reason
assert r.usage.completion_tokens <= 20 and r.usage.prompt_tokens > 0, r.usage
print("chat:", repr(r.choices[0].message.content))

parts = []
usage = None
for chunk in client.chat.completions.create(
    model=model, messages=prompt, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
assert "".join(parts) == expected, ("".join(parts), expected)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
print("stream: same text,", usage.completion_tokens, "tokens")

sampled = dict(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    max_tokens=5,
    temperature=0.8,
    top_p=0.9,
    seed=7,
    presence_penalty=0.5,
    frequency_penalty=0.5,
    extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1},
)
r = client.chat.completions.create(**sampled, logprobs=True, top_logprobs=2)
lp = r.choices[0].logprobs.content
assert len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in lp), lp
again = client.chat.completions.create(**sampled)
assert again.choices[0].message.content == r.choices[0].message.content, "a seeded request changed"
print("sampled, seeded, logprobs:", repr(r.choices[0].message.content))

c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
assert c.choices[0].text and c.usage.completion_tokens == 8, c
print("completion:", repr(c.choices[0].text))

bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("wrong key: 401")

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=4)
    raise SystemExit("empty messages were accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "messages" in str(e), e
print("empty messages: 400")

try:
    client.chat.completions.create(model="no-such-model", messages=prompt, max_tokens=4)
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
print("unknown model: 404")

vision = openai.OpenAI(base_url=vision_url, api_key="none", max_retries=0)
with open(image, "rb") as f:
    url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
r = vision.chat.completions.create(
    model=vision.models.list().data[0].id,
    messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What is in the picture?"},
    ]}],
    max_tokens=8,
    temperature=0,
)
assert r.choices[0].message.content == expected_image, (r.choices[0].message.content, expected_image)
print("image part:", repr(r.choices[0].message.content))
# Structured output: every answer under response_format parses and validates, and ends because the JSON is
# complete (finish_reason "stop"), for 50 seeds of each schema, sent together so that the server batches them.
def structured(schema_name, schema, seed, stream=False):
    fmt = {"type": "json_schema", "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
    args = dict(model=model, messages=[{"role": "user", "content": "Describe the king of Israel"}],
                max_tokens=120, temperature=1.0, top_p=0.95, seed=seed, response_format=fmt)
    if not stream:
        r = client.chat.completions.create(**args)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish


with concurrent.futures.ThreadPoolExecutor(16) as pool:
    for f in sorted(os.listdir(schema_dir)):
        with open(os.path.join(schema_dir, f)) as fh:
            schema = json.load(fh)
        name = f.removesuffix(".json")
        answers = list(pool.map(lambda s: structured(name, schema, s), range(50)))
        for seed, (text, finish) in enumerate(answers):
            assert finish == "stop", (name, seed, finish, text)
            jsonschema.validate(json.loads(text), schema)
        distinct = len({t for t, _ in answers})
        assert distinct >= 5, (name, distinct)
        streamed = structured(name, schema, 3, stream=True)
        assert streamed == answers[3], (name, streamed, answers[3])
        print(f"response_format {name}: 50 valid, {distinct} distinct, streamed the same")

r = client.chat.completions.create(model=model, messages=prompt, max_tokens=60, temperature=0.7, seed=1,
                                   response_format={"type": "json_object"})
assert r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].message.content), dict), r
print("json_object:", r.choices[0].message.content)

try:
    client.chat.completions.create(model=model, messages=prompt, max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "uniq", "schema": {"type": "array", "uniqueItems": True}}})
    raise SystemExit("an unsupported schema was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "uniqueItems" in str(e), e
print("unsupported schema: 400")

# Tools: a named or required tool_choice is enforced by the grammar, so the call always parses; it comes back
# in tool_calls (arguments valid under the tool's parameters), streamed as delta.tool_calls pieces.
weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
clock = {"type": "function", "function": {"name": "now", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
    "required": ["zone"], "additionalProperties": False}}}
params = {t["function"]["name"]: t["function"]["parameters"] for t in (weather, clock)}
ask = [{"role": "user", "content": "What is the weather in Oslo?"}]


def called(choice, seed, stream=False):
    args = dict(model=model, messages=ask, tools=[weather, clock], tool_choice=choice, max_tokens=80,
                temperature=1.0, seed=seed)
    if not stream:
        r = client.chat.completions.create(**args)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        return [(t.id, t.function.name, t.function.arguments) for t in c.message.tool_calls]
    calls, finish = {}, None
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            assert not c.delta.content, c.delta
            for t in c.delta.tool_calls or []:
                got = calls.setdefault(t.index, [None, None, ""])
                got[0] = t.id or got[0]
                got[1] = (t.function.name if t.function else None) or got[1]
                got[2] += (t.function.arguments if t.function else None) or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls", finish
    return [tuple(calls[i]) for i in sorted(calls)]


named = {"type": "function", "function": {"name": "get_weather"}}
for choice in (named, "required"):
    names = set()
    for seed in range(8):
        got, streamed = called(choice, seed), called(choice, seed, stream=True)
        assert [g[1:] for g in got] == [g[1:] for g in streamed], (choice, seed, got, streamed)
        assert all(g[0] for g in got + streamed) and len({g[0] for g in got}) == len(got), (got, streamed)
        for _, name, arguments in got:
            jsonschema.validate(json.loads(arguments), params[name])
            names.add(name)
    assert choice == "required" or names == {"get_weather"}, names
    print("tool_choice", choice if isinstance(choice, str) else "named", "calls:", sorted(names), "valid, streamed the same")

# tool_choice "auto" (the default with tools): the answer is read as calls only when it is wholly calls to the
# request's tools. The demo model knows no tools, so a response_format steers it: an answer shaped as a call to
# get_weather comes back in tool_calls, an answer shaped as some other object, or plain prose, stays content
# (streamed: held back while it could still be a call, then sent as content).
call_shape = {"type": "json_schema", "json_schema": {"name": "call", "schema": {
    "type": "object", "properties": {"name": {"const": "get_weather"}, "parameters": params["get_weather"]},
    "required": ["name", "parameters"], "additionalProperties": False}}}
other_shape = {"type": "json_schema", "json_schema": {"name": "other", "schema": {
    "type": "object", "properties": {"name": {"const": "get_time"}, "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
        "additionalProperties": False}},
    "required": ["name", "parameters"], "additionalProperties": False}}}


def auto(seed, fmt, stream):
    args = dict(model=model, messages=ask, tools=[weather, clock], max_tokens=80, temperature=1.0, seed=seed)
    if fmt:
        args["response_format"] = fmt
    if not stream:
        c = client.chat.completions.create(**args).choices[0]
        calls = [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
        return c.message.content, calls, c.finish_reason
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            content += c.delta.content or ""
            for t in c.delta.tool_calls or []:
                got = calls.setdefault(t.index, ["", ""])
                got[0] += (t.function.name if t.function else None) or ""
                got[1] += (t.function.arguments if t.function else None) or ""
            finish = c.finish_reason or finish
    return content or None, [tuple(calls[i]) for i in sorted(calls)], finish


for seed in range(4):
    for stream in (False, True):
        content, calls, finish = auto(seed, call_shape, stream)
        assert content is None and finish == "tool_calls" and len(calls) == 1, (seed, stream, content, calls)
        assert calls[0][0] == "get_weather", calls
        jsonschema.validate(json.loads(calls[0][1]), params["get_weather"])
        content, calls, finish = auto(seed, other_shape, stream)
        assert not calls and finish == "stop" and json.loads(content)["name"] == "get_time", (content, calls)
        content, calls, finish = auto(seed, None, stream)
        assert not calls and content and finish in ("stop", "length"), (content, calls, finish)
print("tool_choice auto: a call to a listed tool lands in tool_calls, other objects and prose stay content")

# The call and its result go back through the template: an assistant message with tool_calls (arguments as
# a JSON string), then a tool message with its tool_call_id.
call_id, name, arguments = called(named, 1)[0]
history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
    {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": -3}'},
]
r = client.chat.completions.create(model=model, messages=history, tools=[weather], tool_choice="none", max_tokens=8,
                                   temperature=0)
assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r
print("tool result turn:", repr(r.choices[0].message.content))

try:
    client.chat.completions.create(model=model, messages=ask, tools=[weather], max_tokens=4,
                                   tool_choice={"type": "function", "function": {"name": "nope"}})
    raise SystemExit("a tool_choice naming no tool was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "nope" in str(e), e
print("unknown tool: 400")
print("ok")
