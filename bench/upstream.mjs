// A fake OpenAI Images upstream for `npm run bench`, run as its own process.
//
// It reads every request body to the end (multipart included), then answers with JSON:
//   - a request whose first body chunk contains `bench:large` (put in the prompt) gets one
//     b64_json of BENCH_LARGE_BYTES (1.5 MB by default);
//   - anything else gets a small answer (~200 bytes, with `usage`).
// Choosing by body, not by path or model, lets the gateway, nginx and direct clients send the very
// same request. BENCH_UPSTREAM_DELAY_MS delays every answer (default 0).
// Prints `listening <port>` on stdout once it accepts connections.
import { randomBytes } from 'node:crypto'
import { createServer } from 'node:http'

const delayMs = Number(process.env.BENCH_UPSTREAM_DELAY_MS ?? '0')
const largeBytes = Number(process.env.BENCH_LARGE_BYTES ?? String(1_500_000))
const usage = {
  total_tokens: 4210,
  input_tokens: 50,
  output_tokens: 4160,
  input_tokens_details: { text_tokens: 50, image_tokens: 0 }
}

const small = Buffer.from(JSON.stringify({ created: 1_700_000_000, data: [{ b64_json: 'aGVsbG8=' }], usage }))
// base64 of random bytes, trimmed to the wanted length (a multiple of 4, so it stays valid base64).
const b64 = randomBytes(Math.ceil((largeBytes * 3) / 4)).toString('base64').slice(0, largeBytes - (largeBytes % 4))
const large = Buffer.from(JSON.stringify({ created: 1_700_000_000, data: [{ b64_json: b64 }], usage }))

const MARKER = Buffer.from('bench:large')

function answer(response, payload) {
  response.writeHead(200, {
    'content-type': 'application/json',
    'content-length': payload.length,
    'x-request-id': 'req_bench',
    'openai-processing-ms': '1'
  })
  response.end(payload)
}

const server = createServer({ keepAliveTimeout: 60_000, requestTimeout: 0 }, (request, response) => {
  let payload = null
  // Read the whole body (and drop it) before answering, as a real upstream would.
  request.on('data', (chunk) => {
    payload ??= chunk.includes(MARKER) ? large : small
  })
  request.on('error', () => undefined)
  request.on('end', () => {
    payload ??= small
    if (delayMs > 0) setTimeout(() => answer(response, payload), delayMs)
    else answer(response, payload)
  })
})
server.listen(Number(process.env.PORT ?? '0'), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`)
})
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
