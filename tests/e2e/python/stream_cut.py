"""A stream cut after the first bytes must reach the SDK as an error, never as a clean end."""
import os
import sys

import openai
from openai import AzureOpenAI

client = AzureOpenAI(
    azure_endpoint=os.environ["GATEWAY_URL"],
    api_key=os.environ["GATEWAY_KEY"],
    api_version=os.environ["API_VERSION"],
    max_retries=0,
)
text, chunks = "", 0
try:
    stream = client.chat.completions.create(
        model=os.environ["DEPLOYMENT"],
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
    )
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
except openai.APIConnectionError as e:
    # A bare connection abort is an error too, but the gateway must say why in-band.
    sys.exit(f"the stream ended by a connection abort, without the gateway's SSE error event: {e!r}")
except openai.APIError as e:
    # The SDK raises APIError when a data frame carries an "error" key: the gateway's event.
    print(f"stream raised: {type(e).__name__} after {chunks} chunks: {e}")
    sys.exit(0)
sys.exit(f"the cut stream completed cleanly after {chunks} chunks: {text!r}")
