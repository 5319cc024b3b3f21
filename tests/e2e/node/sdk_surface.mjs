// The official openai Node SDK, unchanged, through the gateway: every operation an app uses.
//
// The twin of tests/e2e/python/sdk_surface.py, step for step and line for line: each call in two
// modes — `azure`: `new AzureOpenAI({ endpoint: GW, apiVersion })` (the dated surface), `v1`:
// `new OpenAI({ baseURL: GW + '/openai/v1/' })` — with `model` the gateway's name. Each step checks
// what the answer says and prints `ok <mode> <step>`; the first failure prints the SDK's error and
// exits non-zero. Then a wrong key on every call must raise AuthenticationError (401), never
// NotFoundError: `ok <mode> bad-key <step>`.
//
// The follow-up and the retrieval of a stored response go to FOLLOW_UP_URL (another data plane, if
// set): the gateway must pin them to the endpoint that created the response.
//
// Environment: MODELGW_NODE_OPENAI (the npm prefix the SDK is installed in: `npm install --prefix
// DIR openai@VER`), GATEWAY_URL, FOLLOW_UP_URL (default GATEWAY_URL), GATEWAY_KEY, GATEWAY_NAME, API_VERSION (default
// 2025-04-01-preview), MODES (default "azure v1").

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readFileSync } from 'node:fs';

const prefix = process.env.MODELGW_NODE_OPENAI;
if (!prefix) {
  console.error('MODELGW_NODE_OPENAI is not set: the npm prefix holding the openai package');
  process.exit(2);
}
const sdkDir = join(prefix, 'node_modules', 'openai');
const sdk = await import(pathToFileURL(join(sdkDir, 'index.mjs')).href);
const { OpenAI, AzureOpenAI, AuthenticationError, toFile } = sdk;
const sdkVersion = JSON.parse(readFileSync(join(sdkDir, 'package.json'), 'utf8')).version;

const URL_ = process.env.GATEWAY_URL.replace(/\/+$/, '');
const FOLLOW_UP_URL = (process.env.FOLLOW_UP_URL || URL_).replace(/\/+$/, '');
const KEY = process.env.GATEWAY_KEY;
const MODEL = process.env.GATEWAY_NAME;
const API_VERSION = process.env.API_VERSION || '2025-04-01-preview';
const MODES = (process.env.MODES || 'azure v1').split(/\s+/).filter(Boolean);
const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The current weather in a city.',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', description: "The city's name" } },
      required: ['city'],
    },
  },
};
const QUESTION = [{ role: 'user', content: 'What is the weather in Paris?' }];

/** The client an app of this mode builds; no retries, so an error is the gateway's own. */
function client(mode, apiKey, url = URL_) {
  if (mode === 'azure') {
    return new AzureOpenAI({ endpoint: url, apiKey, apiVersion: API_VERSION, maxRetries: 0 });
  }
  return new OpenAI({ baseURL: `${url}/openai/v1/`, apiKey, maxRetries: 0 });
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** A small valid WAV (0.2 s of a 16 kHz mono 16-bit tone), made here: no fixture file. */
function wavBytes() {
  const frames = 3200;
  const data = Buffer.alloc(frames * 2);
  for (let i = 0; i < frames; i++) data.writeInt16LE(((i % 40) - 20) * 800, i * 2);
  const head = Buffer.alloc(44);
  head.write('RIFF', 0);
  head.writeUInt32LE(36 + data.length, 4);
  head.write('WAVE', 8);
  head.write('fmt ', 12);
  head.writeUInt32LE(16, 16); // fmt chunk size
  head.writeUInt16LE(1, 20); // PCM
  head.writeUInt16LE(1, 22); // mono
  head.writeUInt32LE(16000, 24); // sample rate
  head.writeUInt32LE(32000, 28); // byte rate
  head.writeUInt16LE(2, 32); // block align
  head.writeUInt16LE(16, 34); // bits per sample
  head.write('data', 36);
  head.writeUInt32LE(data.length, 40);
  return Buffer.concat([head, data]);
}

const wavFile = () => toFile(wavBytes(), 'hello.wav', { type: 'audio/wav' });

// ---- the steps; each returns something short to print -------------------------------------------

async function chat(c) {
  const r = await c.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hello' }] });
  check(r.object === 'chat.completion', `object ${r.object}`);
  const text = r.choices[0].message.content;
  check(text, `empty content: ${JSON.stringify(r)}`);
  check(r.usage && r.usage.total_tokens > 0, `usage ${JSON.stringify(r.usage)}`);
  return text;
}

async function chatStream(c) {
  const stream = await c.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Hello' }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    const delta = chunk.choices?.[0]?.delta;
    if (delta?.content) text += delta.content;
    if (chunk.usage) usage = chunk.usage;
  }
  check(chunks >= 3 && text, `${chunks} chunks, text ${JSON.stringify(text)}`);
  check(usage && usage.total_tokens > 0, `usage ${JSON.stringify(usage)}`);
  return text;
}

/** The conversation after the model asked for `name(args)`: its request and our answer. */
function toolResultMessages(id, name, args) {
  const parsed = JSON.parse(args);
  check(typeof parsed.city === 'string' && parsed.city, `arguments ${args}`);
  return [
    ...QUESTION,
    { role: 'assistant', content: null, tool_calls: [{ id, type: 'function', function: { name, arguments: args } }] },
    { role: 'tool', tool_call_id: id, content: JSON.stringify({ city: parsed.city, temp_c: 21 }) },
  ];
}

async function toolCall(c) {
  let r = await c.chat.completions.create({ model: MODEL, messages: QUESTION, tools: [WEATHER_TOOL] });
  const choice = r.choices[0];
  check(choice.finish_reason === 'tool_calls', `finish_reason ${choice.finish_reason}`);
  const calls = choice.message.tool_calls;
  check(calls && calls.length === 1, `tool_calls ${JSON.stringify(calls)}`);
  const call = calls[0];
  check(call.type === 'function' && call.function.name === 'get_weather' && call.id, `call ${JSON.stringify(call)}`);
  const messages = toolResultMessages(call.id, call.function.name, call.function.arguments);
  r = await c.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL] });
  check(r.choices[0].finish_reason === 'stop', `finish_reason ${r.choices[0].finish_reason}`);
  check(r.choices[0].message.content, `no text after the tool result: ${JSON.stringify(r)}`);
  return r.choices[0].message.content;
}

async function toolCallStream(c) {
  const stream = await c.chat.completions.create({
    model: MODEL,
    messages: QUESTION,
    tools: [WEATHER_TOOL],
    stream: true,
    stream_options: { include_usage: true },
  });
  const calls = new Map();
  let finish = null;
  let deltas = 0;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      for (const d of choice.delta?.tool_calls ?? []) {
        deltas += 1;
        if (!calls.has(d.index)) calls.set(d.index, { id: null, name: null, arguments: '' });
        const call = calls.get(d.index);
        if (d.id) call.id = d.id;
        if (d.function?.name) call.name = d.function.name;
        if (d.function?.arguments) call.arguments += d.function.arguments;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  check(finish === 'tool_calls', `finish_reason ${finish}`);
  check(calls.size === 1 && calls.has(0), `tool call indexes ${[...calls.keys()]}`);
  check(deltas >= 3, `the arguments came in ${deltas} deltas, not streamed`);
  const call = calls.get(0);
  check(call.id && call.name === 'get_weather', `call ${JSON.stringify(call)}`);
  const messages = toolResultMessages(call.id, call.name, call.arguments);
  let text = '';
  const answer = await c.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL], stream: true });
  for await (const chunk of answer) text += chunk.choices?.[0]?.delta?.content ?? '';
  check(text, 'no streamed text after the tool result');
  return text;
}

async function embeddings(c) {
  const r = await c.embeddings.create({ model: MODEL, input: 'Hello' });
  check(r.data.length === 1 && r.data[0].embedding.length > 0, `embedding ${JSON.stringify(r.data)}`);
  check(r.data[0].embedding.every((x) => typeof x === 'number'), 'the vector is not numbers');
  return r.data[0].embedding.length;
}

async function responsesCreate(c, state) {
  const r = await c.responses.create({ model: MODEL, input: 'Hello' });
  check(r.object === 'response' && r.id.startsWith('resp_'), `response ${r.object} ${r.id}`);
  check(r.status === 'completed', `status ${r.status}`);
  check(r.output_text, `no output text: ${JSON.stringify(r.output)}`);
  check(r.usage && r.usage.total_tokens > 0, `usage ${JSON.stringify(r.usage)}`);
  state.response = r;
  return r.id;
}

async function responsesStream(c) {
  const types = [];
  let text = '';
  let completed = null;
  const stream = await c.responses.create({ model: MODEL, input: 'Hello', stream: true });
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  check(types[0] === 'response.created', `first event ${types[0]}`);
  check(types.at(-1) === 'response.completed', `last event ${types.at(-1)}`);
  check(types.includes('response.output_text.delta'), `no text delta among ${types}`);
  check(text, 'the deltas carry no text');
  check(completed.usage && completed.usage.total_tokens > 0, `usage ${JSON.stringify(completed.usage)}`);
  const outputText = completed.output
    .filter((item) => item.type === 'message')
    .flatMap((item) => item.content)
    .filter((part) => part.type === 'output_text')
    .map((part) => part.text)
    .join('');
  check(outputText === text, `${JSON.stringify(outputText)} != the deltas' ${JSON.stringify(text)}`);
  return completed.id;
}

async function responsesFollowUp(_, state) {
  const first = state.response;
  const r = await state.follow.responses.create({ model: MODEL, input: 'And then?', previous_response_id: first.id });
  check(r.previous_response_id === first.id, `previous_response_id ${r.previous_response_id} != ${first.id}`);
  check(r.id !== first.id && r.output_text, `follow-up ${r.id} ${JSON.stringify(r.output_text)}`);
  return r.id;
}

async function responsesRetrieve(_, state) {
  const first = state.response;
  const r = await state.follow.responses.retrieve(first.id);
  check(r.id === first.id, `retrieved ${r.id}, asked ${first.id}`);
  check(r.output_text === first.output_text, `${JSON.stringify(r.output_text)} != ${JSON.stringify(first.output_text)}`);
  return r.id;
}

async function models(c) {
  const ids = [];
  for await (const m of c.models.list()) ids.push(m.id);
  check(ids.includes(MODEL) && ids.includes('auto'), `models ${ids}`);
  return ids.join(',');
}

async function image(c) {
  const r = await c.images.generate({
    model: MODEL,
    prompt: 'A red dot',
    n: 1,
    size: '1024x1024',
    response_format: 'b64_json',
  });
  check(r.data.length === 1 && r.data[0].b64_json, `images ${JSON.stringify(r.data)}`);
  const png = Buffer.from(r.data[0].b64_json, 'base64');
  check(png.subarray(0, 8).equals(PNG_MAGIC), `not a PNG: ${png.subarray(0, 8).toString('hex')}`);
  return png.length;
}

async function transcription(c) {
  const r = await c.audio.transcriptions.create({ model: MODEL, file: await wavFile() });
  check(r.text, `empty transcription: ${JSON.stringify(r)}`);
  return r.text;
}

const STEPS = [
  ['chat', chat],
  ['chat-stream', chatStream],
  ['tool-call', toolCall],
  ['tool-call-stream', toolCallStream],
  ['embeddings', embeddings],
  ['responses-create', responsesCreate],
  ['responses-stream', responsesStream],
  ['responses-follow-up', responsesFollowUp],
  ['responses-retrieve', responsesRetrieve],
  ['models', models],
  ['image', image],
  ['transcription', transcription],
];

// With a wrong key, each call must be refused by the gateway's authentication: 401.
const BAD_KEY_STEPS = [
  ['chat', (c) => c.chat.completions.create({ model: MODEL, messages: QUESTION })],
  ['chat-stream', (c) => c.chat.completions.create({ model: MODEL, messages: QUESTION, stream: true })],
  ['tool-call', (c) => c.chat.completions.create({ model: MODEL, messages: QUESTION, tools: [WEATHER_TOOL] })],
  ['embeddings', (c) => c.embeddings.create({ model: MODEL, input: 'Hello' })],
  ['responses-create', (c) => c.responses.create({ model: MODEL, input: 'Hello' })],
  ['responses-stream', (c) => c.responses.create({ model: MODEL, input: 'Hello', stream: true })],
  [
    'responses-follow-up',
    (c, s) => c.responses.create({ model: MODEL, input: 'x', previous_response_id: s.response.id }),
  ],
  ['responses-retrieve', (c, s) => c.responses.retrieve(s.response.id)],
  ['models', async (c) => { for await (const _ of c.models.list()); }],
  ['image', (c) => c.images.generate({ model: MODEL, prompt: 'A red dot', response_format: 'b64_json' })],
  ['transcription', async (c) => c.audio.transcriptions.create({ model: MODEL, file: await wavFile() })],
];

function fail(mode, step, err) {
  // A connection error's cause says what the socket saw (e.g. `write EPIPE`).
  const causes = [];
  for (let c = err?.cause; c; c = c.cause) causes.push(`${c.code ?? c.constructor?.name}: ${c.message}`);
  const why = causes.length ? ` (${causes.join(' <- ')})` : '';
  console.log(`FAIL ${mode} ${step}: ${err?.constructor?.name}: ${err?.message ?? err}${why}`);
  if (err?.stack) console.error(err.stack);
  process.exit(1);
}

console.log(`openai-node ${sdkVersion}`);
for (const mode of MODES) {
  const c = client(mode, KEY);
  const state = { follow: client(mode, KEY, FOLLOW_UP_URL) };
  for (const [step, run] of STEPS) {
    let got;
    try {
      got = await run(c, state);
    } catch (err) {
      fail(mode, step, err);
    }
    console.log(`ok ${mode} ${step}: ${String(got).slice(0, 80)}`);
  }
  const bad = client(mode, `mgw_${'0'.repeat(40)}`);
  for (const [step, run] of BAD_KEY_STEPS) {
    let accepted = false;
    try {
      await run(bad, state);
      accepted = true;
    } catch (err) {
      if (!(err instanceof AuthenticationError) || err.status !== 401) fail(mode, `bad-key ${step}`, err);
    }
    if (accepted) fail(mode, `bad-key ${step}`, new Error('a wrong key was accepted'));
    console.log(`ok ${mode} bad-key ${step}`);
  }
}
