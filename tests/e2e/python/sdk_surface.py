"""The official openai Python SDK, unchanged, through the gateway: every operation an app uses.

Runs each call of the inference surface in two modes, as apps are written:
- `azure`: `AzureOpenAI(azure_endpoint=GW, api_version=…)`, the dated surface
  (`/openai/deployments/{model}/…?api-version=`, `/openai/responses?api-version=`, …);
- `v1`: `OpenAI(base_url=GW + "/openai/v1/")`, Azure's v1 surface, no api-version.
`model` is always the gateway's name (GATEWAY_NAME). The follow-up and the retrieval of a stored
response go to FOLLOW_UP_URL (another data plane, if set): the gateway must pin them to the
endpoint that created the response, whichever data plane they reach. Each step checks what the answer says, not
just that no exception was raised, and prints `ok <mode> <step>`; the first failure prints the
SDK's error and exits non-zero. Then a wrong key on every call must raise AuthenticationError
(401), never NotFoundError: `ok <mode> bad-key <step>`.

Environment: GATEWAY_URL, FOLLOW_UP_URL (default GATEWAY_URL), GATEWAY_KEY, GATEWAY_NAME, API_VERSION (default 2025-04-01-preview),
MODES (default "azure v1").
"""

import base64
import io
import json
import os
import sys
import traceback
import wave

import openai
from openai import AzureOpenAI, OpenAI

URL = os.environ["GATEWAY_URL"].rstrip("/")
FOLLOW_UP_URL = os.environ.get("FOLLOW_UP_URL", URL).rstrip("/")
KEY = os.environ["GATEWAY_KEY"]
MODEL = os.environ["GATEWAY_NAME"]
API_VERSION = os.environ.get("API_VERSION", "2025-04-01-preview")
MODES = os.environ.get("MODES", "azure v1").split()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(mode, key, url=URL):
    """The client an app of this mode builds; no retries, so an error is the gateway's own."""
    if mode == "azure":
        return AzureOpenAI(azure_endpoint=url, api_key=key, api_version=API_VERSION, max_retries=0)
    return OpenAI(base_url=url + "/openai/v1/", api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def wav_bytes():
    """A small valid WAV (0.2 s of a 16 kHz mono 16-bit tone), made here: no fixture file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join((((i % 40) - 20) * 800).to_bytes(2, "little", signed=True) for i in range(3200)))
    return buf.getvalue()


# ---- the steps; each returns what a later step needs -------------------------------------------


def chat(c, _):
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}])
    check(r.object == "chat.completion", f"object {r.object!r}")
    text = r.choices[0].message.content
    check(text, f"empty content: {r}")
    check(r.usage is not None and r.usage.total_tokens > 0, f"usage {r.usage}")
    return text


def chat_stream(c, _):
    stream = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    check(chunks >= 3 and text, f"{chunks} chunks, text {text!r}")
    check(usage is not None and usage.total_tokens > 0, f"usage {usage}")
    return text


def tool_result_messages(call_id, name, arguments):
    """The conversation after the model asked for `name(arguments)`: its request and our answer."""
    args = json.loads(arguments)
    check(isinstance(args.get("city"), str) and args["city"], f"arguments {arguments!r}")
    return QUESTION + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"city": args["city"], "temp_c": 21})},
    ]


def tool_call(c, _):
    r = c.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason!r}")
    calls = choice.message.tool_calls
    check(calls and len(calls) == 1, f"tool_calls {calls}")
    call = calls[0]
    check(call.type == "function" and call.function.name == "get_weather", f"call {call}")
    check(call.id, "a tool call without id")
    messages = tool_result_messages(call.id, call.function.name, call.function.arguments)
    r = c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    check(r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason!r}")
    check(r.choices[0].message.content, f"no text after the tool result: {r}")
    return r.choices[0].message.content


def tool_call_stream(c, _):
    stream = c.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}
    )
    calls, finish, deltas = {}, None, 0
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                deltas += 1
                call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    call["id"] = d.id
                if d.function and d.function.name:
                    call["name"] = d.function.name
                if d.function and d.function.arguments:
                    call["arguments"] += d.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    check(finish == "tool_calls", f"finish_reason {finish!r}")
    check(list(calls) == [0], f"tool call indexes {list(calls)}")
    check(deltas >= 3, f"the arguments came in {deltas} deltas, not streamed")
    call = calls[0]
    check(call["id"] and call["name"] == "get_weather", f"call {call}")
    messages = tool_result_messages(call["id"], call["name"], call["arguments"])
    text = ""
    for chunk in c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    check(text, "no streamed text after the tool result")
    return text


def embeddings(c, _):
    r = c.embeddings.create(model=MODEL, input="Hello")
    check(len(r.data) == 1 and len(r.data[0].embedding) > 0, f"embedding {r.data}")
    check(all(isinstance(x, float) for x in r.data[0].embedding), "the vector is not floats")
    return len(r.data[0].embedding)


def responses_create(c, state):
    r = c.responses.create(model=MODEL, input="Hello")
    check(r.object == "response" and r.id.startswith("resp_"), f"response {r.object} {r.id}")
    check(r.status == "completed", f"status {r.status!r}")
    check(r.output_text, f"no output text: {r.output}")
    check(r.usage is not None and r.usage.total_tokens > 0, f"usage {r.usage}")
    state["response"] = r
    return r.id


def responses_stream(c, _):
    types, text, completed = [], "", None
    for event in c.responses.create(model=MODEL, input="Hello", stream=True):
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            completed = event.response
    check(types and types[0] == "response.created", f"first event {types[:1]}")
    check(types[-1] == "response.completed", f"last event {types[-1:]}")
    check("response.output_text.delta" in types, f"no text delta among {types}")
    check(text, "the deltas carry no text")
    check(completed.usage is not None and completed.usage.total_tokens > 0, f"usage {completed.usage}")
    check(completed.output_text == text, f"{completed.output_text!r} != the deltas' {text!r}")
    return completed.id


def responses_follow_up(_, state):
    first = state["response"]
    r = state["follow"].responses.create(model=MODEL, input="And then?", previous_response_id=first.id)
    check(r.previous_response_id == first.id, f"previous_response_id {r.previous_response_id!r} != {first.id!r}")
    check(r.id != first.id and r.output_text, f"follow-up {r.id} {r.output_text!r}")
    return r.id


def responses_retrieve(_, state):
    first = state["response"]
    r = state["follow"].responses.retrieve(first.id)
    check(r.id == first.id, f"retrieved {r.id!r}, asked {first.id!r}")
    check(r.output_text == first.output_text, f"{r.output_text!r} != {first.output_text!r}")
    return r.id


def models(c, _):
    ids = [m.id for m in c.models.list()]
    check(MODEL in ids and "auto" in ids, f"models {ids}")
    return ids


def image(c, _):
    r = c.images.generate(model=MODEL, prompt="A red dot", n=1, size="1024x1024", response_format="b64_json")
    check(len(r.data) == 1 and r.data[0].b64_json, f"images {r.data}")
    png = base64.b64decode(r.data[0].b64_json)
    check(png.startswith(PNG_MAGIC), f"not a PNG: {png[:8]!r}")
    return len(png)


def transcription(c, _):
    r = c.audio.transcriptions.create(model=MODEL, file=("hello.wav", wav_bytes(), "audio/wav"))
    check(r.text, f"empty transcription: {r}")
    return r.text


STEPS = [
    ("chat", chat),
    ("chat-stream", chat_stream),
    ("tool-call", tool_call),
    ("tool-call-stream", tool_call_stream),
    ("embeddings", embeddings),
    ("responses-create", responses_create),
    ("responses-stream", responses_stream),
    ("responses-follow-up", responses_follow_up),
    ("responses-retrieve", responses_retrieve),
    ("models", models),
    ("image", image),
    ("transcription", transcription),
]

# With a wrong key, each call must be refused by the gateway's authentication: 401.
BAD_KEY_STEPS = [
    ("chat", lambda c, s: c.chat.completions.create(model=MODEL, messages=QUESTION)),
    ("chat-stream", lambda c, s: c.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)),
    ("tool-call", lambda c, s: c.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL])),
    ("embeddings", lambda c, s: c.embeddings.create(model=MODEL, input="Hello")),
    ("responses-create", lambda c, s: c.responses.create(model=MODEL, input="Hello")),
    ("responses-stream", lambda c, s: c.responses.create(model=MODEL, input="Hello", stream=True)),
    (
        "responses-follow-up",
        lambda c, s: c.responses.create(model=MODEL, input="x", previous_response_id=s["response"].id),
    ),
    ("responses-retrieve", lambda c, s: c.responses.retrieve(s["response"].id)),
    ("models", lambda c, s: c.models.list()),
    ("image", lambda c, s: c.images.generate(model=MODEL, prompt="A red dot", response_format="b64_json")),
    (
        "transcription",
        lambda c, s: c.audio.transcriptions.create(model=MODEL, file=("hello.wav", wav_bytes(), "audio/wav")),
    ),
]


def fail(mode, step, err):
    print(f"FAIL {mode} {step}: {type(err).__name__}: {err}", flush=True)
    traceback.print_exc()
    sys.exit(1)


def main():
    print(f"openai {openai.__version__}", flush=True)
    for mode in MODES:
        c, state = client(mode, KEY), {"follow": client(mode, KEY, FOLLOW_UP_URL)}
        for step, run in STEPS:
            try:
                got = run(c, state)
            except Exception as err:  # noqa: BLE001 - any failure ends the run, saying which step
                fail(mode, step, err)
            print(f"ok {mode} {step}: {str(got)[:80]}", flush=True)
        bad = client(mode, "mgw_" + "0" * 40)
        for step, run in BAD_KEY_STEPS:
            try:
                run(bad, state)
            except openai.AuthenticationError as err:
                if err.status_code != 401:
                    fail(mode, f"bad-key {step}", err)
            except Exception as err:  # noqa: BLE001
                fail(mode, f"bad-key {step}", err)
            else:
                fail(mode, f"bad-key {step}", AssertionError("a wrong key was accepted"))
            print(f"ok {mode} bad-key {step}", flush=True)


if __name__ == "__main__":
    main()
