#!/usr/bin/env python3
"""Checks a mock region's wire against the official `openai` Python SDK (not wired into CI).

Start a region, then run this with its URL and key:

    modelgw mock-azure --api-key k --deployment gpt-4o-mini --deployment text-embedding-3-small &
    # or: MOCK_ADDR=127.0.0.1:8089 MOCK_KEY=k cargo run -p modelgw-mock-openai --example serve
    python3 -m venv /tmp/sdk && /tmp/sdk/bin/pip install openai
    MOCK_URL=http://127.0.0.1:8089 MOCK_KEY=k /tmp/sdk/bin/python tests/mock-openai/scripts/sdk_check.py

Every operation runs through `AzureOpenAI` (dated api-version) and through
`OpenAI(base_url=<url>/openai/v1/)`; the SDK parses each answer into its own types, so a shape it
cannot read fails here. Prints one line per check and exits non-zero on the first failure.
`sdk_check.mjs` is the same check with the Node SDK. Last run: Python openai 3.63.0, 3.57.0 and
1.109.1, Node openai 6.49.0, all passing.
"""

import io
import json
import os
import sys

import openai
from openai import AzureOpenAI, OpenAI

URL = os.environ.get("MOCK_URL", "http://127.0.0.1:8089")
KEY = os.environ.get("MOCK_KEY", "mock-key")
CHAT = os.environ.get("MOCK_CHAT_DEPLOYMENT", "gpt-4o-mini")
EMBED = os.environ.get("MOCK_EMBEDDINGS_DEPLOYMENT", "text-embedding-3-small")
API_VERSION = os.environ.get("MOCK_API_VERSION", "2025-04-01-preview")

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
RESPONSE_TOOLS = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]} for t in TOOLS]


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        sys.exit(1)


def run(label, client):
    ask = [{"role": "user", "content": "weather?"}]
    chat = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    check(f"{label} chat", "Hello from" in chat.choices[0].message.content)

    stream = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    check(f"{label} streamed chat with usage", text.startswith("Hello from") and usage is not None, text)

    call = client.chat.completions.create(model=CHAT, messages=ask, tools=TOOLS)
    msg = call.choices[0].message
    check(f"{label} tool call", call.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "get_weather")
    args = json.loads(msg.tool_calls[0].function.arguments)
    follow = client.chat.completions.create(model=CHAT, tools=TOOLS, messages=ask + [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"},
    ])
    check(f"{label} tool round trip", "Hello from" in follow.choices[0].message.content, args)

    pieces, name = [], None
    for chunk in client.chat.completions.create(model=CHAT, messages=ask, tools=TOOLS, stream=True):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = tc.function.name or name
            pieces.append(tc.function.arguments or "")
    check(f"{label} streamed tool call", name == "get_weather" and json.loads("".join(pieces)) == args)

    emb = client.embeddings.create(model=EMBED, input=["a", "b"])
    check(f"{label} embeddings", len(emb.data) == 2 and len(emb.data[0].embedding) > 0)

    r = client.responses.create(model=CHAT, input="hello")
    check(f"{label} responses.create", r.output_text.startswith("Hello from") and r.usage.total_tokens > 0, r)
    events = [e.type for e in client.responses.create(model=CHAT, input="hello", stream=True)]
    check(f"{label} streamed responses", events[0] == "response.created" and events[-1] == "response.completed", events)
    r2 = client.responses.create(model=CHAT, input="again", previous_response_id=r.id)
    check(f"{label} previous_response_id", r2.previous_response_id == r.id)
    got = client.responses.retrieve(r.id)
    check(f"{label} responses.retrieve", got.id == r.id and got.output_text == r.output_text)
    items = client.responses.input_items.list(r2.id)
    check(f"{label} input_items", len(items.data) == 1 and items.data[0].type == "message")
    fc = client.responses.create(model=CHAT, input="weather?", tools=RESPONSE_TOOLS)
    out = fc.output[0]
    fr = client.responses.create(model=CHAT, previous_response_id=fc.id, tools=RESPONSE_TOOLS,
                                 input=[{"type": "function_call_output", "call_id": out.call_id, "output": "sunny"}])
    check(f"{label} responses tool round trip", out.type == "function_call" and fr.output_text.startswith("Hello from"))
    try:
        client.responses.cancel(r.id)
        check(f"{label} cancel a foreground response", False, "no error")
    except openai.BadRequestError:
        check(f"{label} cancel a foreground response is a 400", True)
    client.responses.delete(r.id)
    try:
        client.responses.retrieve(r.id)
        check(f"{label} deleted", False, "still there")
    except openai.NotFoundError:
        check(f"{label} a deleted response is NotFoundError", True)

    models = client.models.list()
    check(f"{label} models.list", CHAT in [m.id for m in models.data])

    img = client.images.generate(model=CHAT, prompt="a cat")
    check(f"{label} images.generate", img.data[0].b64_json is not None)
    audio = io.BytesIO(b"RIFF" + bytes(range(256)) * 8)
    audio.name = "hello.wav"
    tr = client.audio.transcriptions.create(model=CHAT, file=audio)
    check(f"{label} audio transcription", "Transcribed 2052 bytes of hello.wav" in tr.text, tr.text)
    audio.seek(0)
    tl = client.audio.translations.create(model=CHAT, file=audio, response_format="text")
    check(f"{label} audio translation (text)", "Translated" in str(tl), tl)
    speech = client.audio.speech.create(model=CHAT, voice="alloy", input="hello")
    check(f"{label} audio speech", len(speech.read()) > 1024)


def main():
    print(f"openai {openai.__version__} against {URL}")
    run("azure", AzureOpenAI(azure_endpoint=URL, api_key=KEY, api_version=API_VERSION, max_retries=0))
    run("v1", OpenAI(base_url=f"{URL}/openai/v1/", api_key=KEY, max_retries=0))
    print("all checks passed")


if __name__ == "__main__":
    main()
