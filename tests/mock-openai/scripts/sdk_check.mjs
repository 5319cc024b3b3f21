// Checks a mock region's wire against the official `openai` Node SDK (not wired into CI); the
// Node twin of sdk_check.py. With a region running (see sdk_check.py):
//   cd /tmp/sdk-node && npm install openai
//   MOCK_URL=http://127.0.0.1:8089 MOCK_KEY=k NODE_PATH=/tmp/sdk-node/node_modules \
//     node --experimental-default-type=module tests/mock-openai/scripts/sdk_check.mjs
// (or copy the file next to that node_modules). Exits non-zero on the first failure.
import OpenAI, { AzureOpenAI, toFile } from 'openai';

const URL = process.env.MOCK_URL ?? 'http://127.0.0.1:8089';
const KEY = process.env.MOCK_KEY ?? 'mock-key';
const CHAT = process.env.MOCK_CHAT_DEPLOYMENT ?? 'gpt-4o-mini';
const EMBED = process.env.MOCK_EMBEDDINGS_DEPLOYMENT ?? 'text-embedding-3-small';
const API_VERSION = process.env.MOCK_API_VERSION ?? '2025-04-01-preview';
const params = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] };
const tools = [{ type: 'function', function: { name: 'get_weather', parameters: params } }];
const responseTools = [{ type: 'function', name: 'get_weather', parameters: params }];

function check(name, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${!ok && detail !== undefined ? `: ${JSON.stringify(detail)}` : ''}`);
  if (!ok) process.exit(1);
}

async function run(label, client) {
  const ask = [{ role: 'user', content: 'weather?' }];
  const chat = await client.chat.completions.create({ model: CHAT, messages: [{ role: 'user', content: 'hi' }] });
  check(`${label} chat`, chat.choices[0].message.content.startsWith('Hello from'));
  let text = '', usage = null;
  const stream = await client.chat.completions.create({
    model: CHAT, messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    usage = chunk.usage ?? usage;
  }
  check(`${label} streamed chat with usage`, text.startsWith('Hello from') && usage !== null, text);
  const call = await client.chat.completions.create({ model: CHAT, messages: ask, tools });
  const msg = call.choices[0].message;
  check(`${label} tool call`, call.choices[0].finish_reason === 'tool_calls' && msg.tool_calls[0].function.name === 'get_weather');
  const follow = await client.chat.completions.create({
    model: CHAT, tools, messages: [...ask, msg, { role: 'tool', tool_call_id: msg.tool_calls[0].id, content: 'sunny' }],
  });
  check(`${label} tool round trip`, follow.choices[0].message.content.startsWith('Hello from'));
  let args = '';
  for await (const chunk of await client.chat.completions.create({ model: CHAT, messages: ask, tools, stream: true })) {
    for (const tc of chunk.choices[0]?.delta?.tool_calls ?? []) args += tc.function?.arguments ?? '';
  }
  check(`${label} streamed tool call`, args === msg.tool_calls[0].function.arguments, args);
  const emb = await client.embeddings.create({ model: EMBED, input: ['a', 'b'] });
  check(`${label} embeddings`, emb.data.length === 2 && emb.data[0].embedding.length > 0);

  const r = await client.responses.create({ model: CHAT, input: 'hello' });
  check(`${label} responses.create`, r.output_text.startsWith('Hello from'), r);
  const events = [];
  for await (const e of await client.responses.create({ model: CHAT, input: 'hello', stream: true })) events.push(e.type);
  check(`${label} streamed responses`, events[0] === 'response.created' && events.at(-1) === 'response.completed', events);
  const r2 = await client.responses.create({ model: CHAT, input: 'again', previous_response_id: r.id });
  check(`${label} previous_response_id`, r2.previous_response_id === r.id);
  const got = await client.responses.retrieve(r.id);
  check(`${label} responses.retrieve`, got.output_text === r.output_text);
  const items = [];
  for await (const item of client.responses.inputItems.list(r2.id)) items.push(item);
  check(`${label} input_items`, items.length === 1 && items[0].type === 'message', items);
  const fc = await client.responses.create({ model: CHAT, input: 'weather?', tools: responseTools });
  const fr = await client.responses.create({
    model: CHAT, previous_response_id: fc.id, tools: responseTools,
    input: [{ type: 'function_call_output', call_id: fc.output[0].call_id, output: 'sunny' }],
  });
  check(`${label} responses tool round trip`, fc.output[0].type === 'function_call' && fr.output_text.startsWith('Hello from'));
  await client.responses.delete(r.id);
  try {
    await client.responses.retrieve(r.id);
    check(`${label} deleted`, false);
  } catch (e) {
    check(`${label} a deleted response is NotFoundError`, e instanceof OpenAI.NotFoundError, e.message);
  }
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  check(`${label} models.list`, models.includes(CHAT), models);
  const img = await client.images.generate({ model: CHAT, prompt: 'a cat' });
  check(`${label} images.generate`, typeof img.data[0].b64_json === 'string');
  const file = await toFile(Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(2048, 7)]), 'hello.wav');
  const tr = await client.audio.transcriptions.create({ model: CHAT, file });
  check(`${label} audio transcription`, tr.text.includes('Transcribed 2052 bytes of hello.wav'), tr.text);
  const speech = await client.audio.speech.create({ model: CHAT, voice: 'alloy', input: 'hello' });
  check(`${label} audio speech`, (await speech.arrayBuffer()).byteLength > 1024);
}

await run('azure', new AzureOpenAI({ endpoint: URL, apiKey: KEY, apiVersion: API_VERSION, maxRetries: 0 }));
await run('v1', new OpenAI({ baseURL: `${URL}/openai/v1/`, apiKey: KEY, maxRetries: 0 }));
console.log('all checks passed');
