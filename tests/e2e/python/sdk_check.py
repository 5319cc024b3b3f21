"""The official openai SDK against the gateway, exactly as an app would use it."""
import os
import sys

import openai
from openai import AzureOpenAI

url, key = os.environ["GATEWAY_URL"], os.environ["GATEWAY_KEY"]
api_version, deployment = os.environ["API_VERSION"], os.environ["DEPLOYMENT"]
print(f"openai {openai.__version__}")

client = AzureOpenAI(azure_endpoint=url, api_key=key, api_version=api_version, max_retries=0)

# 1. A chat completion.
r = client.chat.completions.create(model=deployment, messages=[{"role": "user", "content": "Hello"}])
content = r.choices[0].message.content
assert r.object == "chat.completion", r
assert r.usage.total_tokens > 0, r.usage
print(f"chat ok: {content}")

# 2. A streamed chat, with usage.
chunks, text, usage = 0, "", None
stream = client.chat.completions.create(
    model=deployment,
    messages=[{"role": "user", "content": "Hello"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    chunks += 1
    if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert chunks >= 3 and text, (chunks, text)
assert usage is not None and usage.total_tokens > 0, usage
print(f"stream ok: {chunks} chunks, {text!r}, usage {usage.total_tokens}")

# 3. A wrong gateway key is an AuthenticationError, as with Azure itself.
bad = AzureOpenAI(azure_endpoint=url, api_key="mgw_wrong", api_version=api_version, max_retries=0)
try:
    bad.chat.completions.create(model=deployment, messages=[{"role": "user", "content": "x"}])
    sys.exit("a wrong key was accepted")
except openai.AuthenticationError as e:
    print(f"bad key rejected: {type(e).__name__}")
