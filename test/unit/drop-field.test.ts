import { once } from 'node:events'
import { Busboy } from '@fastify/busboy'
import t, { type Test } from 'tap'
import { dropFormFields } from '../../src/multipart/drop-field.js'
import { MAX_PART_HEADER_BYTES, MultipartScanner } from '../../src/multipart/scanner.js'
import { buildMultipart, type Part } from '../helpers/multipart.js'
import { int, seededRandom, type Rng } from '../helpers/random.js'

/*
 * The filter's output is compared byte for byte with the form built without the dropped parts
 * (same boundary), under every way of cutting the input into chunks: every two-chunk split and
 * 1-byte chunks for small forms, seeded random chunk sizes for large ones. busboy then reads the
 * output back as an independent check that it is still a well-formed form.
 */

const B = 'test-boundary-7f3a9c'
const DROP: ReadonlySet<string> = new Set(['response_format'])
const FORMAT: Part = { name: 'response_format', value: 'b64_json' }
const MODEL: Part = { name: 'model', value: 'gpt-image-1' }
/** Text that looks like a delimiter but is not one: no CRLF before it, a bare CR or LF, or cut short. */
const PROMPT: Part = { name: 'prompt', value: `a boat --${B} in\r--${B} the\n--${B} text\r\n--${B.slice(0, -1)}` }
const KEPT_NAMES: Part[] = [
  { name: 'response_format_x', value: 'a' },
  { name: 'xresponse_format', value: 'b' },
  { name: 'response_forma', value: 'c' },
  { name: 'Response_Format', value: 'd' }
]

function smallFile(name = 'image'): Part {
  return { name, filename: 'a.png', data: Buffer.from(`\x89PNG\r\n\x1a\n--${B}--\r\n-${B}\r\n`, 'latin1') }
}

function form(parts: Part[]): Buffer {
  return buildMultipart(parts, B).body
}

function without(parts: Part[], names = DROP): Buffer {
  return form(parts.filter((p) => !names.has(p.name)))
}

function randomBytes(rng: Rng, length: number): Buffer {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i++) out[i] = Math.floor(rng() * 256)
  return out
}

async function filter(chunks: readonly Buffer[], names = DROP): Promise<Buffer> {
  const stream = dropFormFields(B, names)
  const out: Buffer[] = []
  stream.on('data', (chunk: Buffer) => out.push(chunk))
  for (const chunk of chunks) stream.write(chunk)
  stream.end()
  await once(stream, 'end')
  return Buffer.concat(out)
}

function fixedChunks(body: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = []
  for (let at = 0; at < body.length; at += size) chunks.push(body.subarray(at, at + size))
  return chunks
}

function randomChunks(body: Buffer, rng: Rng, max: number): Buffer[] {
  const chunks: Buffer[] = []
  for (let at = 0; at < body.length; ) {
    const size = int(rng, 1, max)
    chunks.push(body.subarray(at, at + size))
    at += size
  }
  return chunks
}

/** Every two-chunk split, 1-byte chunks and whole; stops at the first wrong output. */
async function checkEveryChunking(t: Test, label: string, input: Buffer, expected: Buffer, names = DROP): Promise<void> {
  const cuts: Buffer[][] = [[input], [...input].map((byte) => Buffer.from([byte]))]
  for (let at = 0; at <= input.length; at++) cuts.push([input.subarray(0, at), input.subarray(at)])
  for (const chunks of cuts) {
    const output = await filter(chunks, names)
    if (!output.equals(expected)) {
      t.equal(output.toString('latin1'), expected.toString('latin1'), `${label}, chunks ${chunks.map((c) => c.length).join('+')}`)
      return
    }
  }
  t.pass(`${label}: ${cuts.length} chunkings`)
}

async function parse(body: Buffer): Promise<{ fields: Record<string, string>; files: Record<string, Buffer> }> {
  const fields: Record<string, string> = {}
  const files: Record<string, Buffer> = {}
  const parser = Busboy({ headers: { 'content-type': `multipart/form-data; boundary=${B}` } })
  parser.on('field', (name: string, value: string) => (fields[name] = value))
  parser.on('file', (name: string, stream: NodeJS.ReadableStream) => {
    const data: Buffer[] = []
    stream.on('data', (chunk: Buffer) => data.push(chunk))
    stream.on('end', () => (files[name] = Buffer.concat(data)))
  })
  const finished = new Promise<void>((resolve, reject) => {
    parser.on('finish', resolve)
    parser.on('error', reject)
  })
  parser.end(body)
  await finished
  return { fields, files }
}

t.test('response_format goes wherever it is, at every chunking; the rest is kept byte for byte', async (t) => {
  const layouts: Part[][] = [
    [FORMAT, MODEL, PROMPT, smallFile()],
    [MODEL, FORMAT, PROMPT, smallFile()],
    [MODEL, PROMPT, smallFile(), FORMAT],
    [FORMAT],
    [FORMAT, FORMAT, MODEL],
    [MODEL, FORMAT, FORMAT],
    [MODEL, PROMPT, smallFile()],
    [...KEPT_NAMES, FORMAT, MODEL],
    [{ ...smallFile('response_format') }, MODEL],
    [{ name: 'response_format', value: '' }, { name: 'response_format', value: `x\r\n--${B.slice(0, -1)}\r\n-` }, MODEL],
    []
  ]
  for (const parts of layouts) {
    const label = `[${parts.map((p) => p.name).join(', ')}]`
    await checkEveryChunking(t, label, form(parts), without(parts))
  }
  const user: Part = { name: 'user', value: 'u-1' }
  const parts = [user, MODEL, FORMAT, PROMPT]
  const names = new Set(['response_format', 'user'])
  await checkEveryChunking(t, 'two names', form(parts), without(parts, names), names)
  await checkEveryChunking(t, 'no names', form(parts), form(parts), new Set())
})

t.test('3 MiB files before and after, random chunks, read back by busboy', async (t) => {
  const rng = seededRandom(0xd20b)
  const big = randomBytes(rng, 3 * 1024 * 1024)
  const mask = randomBytes(rng, 3 * 1024 * 1024 + 17)
  const layouts: Part[][] = [
    [{ name: 'image[]', filename: 'one.png', data: big }, FORMAT, MODEL, { name: 'mask', filename: 'm.png', data: mask }, PROMPT],
    [FORMAT, { name: 'image[]', filename: 'one.png', data: big }, MODEL, { name: 'mask', filename: 'm.png', data: mask }],
    [{ name: 'image[]', filename: 'one.png', data: big }, { name: 'mask', filename: 'm.png', data: mask }, MODEL, FORMAT],
    [{ name: 'image[]', filename: 'one.png', data: big }, { name: 'response_format', filename: 'f.json', data: mask }, FORMAT, PROMPT]
  ]
  for (const [index, parts] of layouts.entries()) {
    const input = form(parts)
    const expected = without(parts)
    for (const max of [64, 4096, 70_000, 1_000_000]) {
      const output = await filter(randomChunks(input, rng, max))
      t.ok(output.equals(expected), `layout ${index}, random chunks of 1..${max} bytes: ${output.length} bytes, expected ${expected.length}`)
    }
    const parsed = await parse(await filter(randomChunks(input, rng, 65_536)))
    const kept = parts.filter((p) => !DROP.has(p.name))
    t.strictSame(Object.keys(parsed.fields).sort(), kept.filter((p) => 'value' in p).map((p) => p.name).sort(), `layout ${index}: fields`)
    t.strictSame(Object.keys(parsed.files).sort(), kept.filter((p) => 'data' in p).map((p) => p.name).sort(), `layout ${index}: files`)
    for (const part of kept) {
      if ('data' in part) t.ok(parsed.files[part.name]?.equals(part.data), `layout ${index}: ${part.name} bytes`)
      else t.equal(parsed.fields[part.name], part.value, `layout ${index}: ${part.name} value`)
    }
  }
})

t.test('a file part is passed on as it comes, not held', async (t) => {
  const rng = seededRandom(7)
  const big = randomBytes(rng, 1024 * 1024)
  const parts: Part[] = [MODEL, { name: 'image', filename: 'a.png', data: big }, FORMAT]
  const input = form(parts)
  const expected = without(parts)
  const fileStart = input.indexOf(big)
  const stream = dropFormFields(B, DROP)
  const out: Buffer[] = []
  stream.on('data', (chunk: Buffer) => out.push(chunk))
  let worstLag = 0
  for (let at = 0; at < input.length; ) {
    const size = int(rng, 1, 30_000)
    stream.write(input.subarray(at, at + size))
    at = Math.min(input.length, at + size)
    await new Promise((resolve) => setImmediate(resolve))
    if (at > fileStart && at < fileStart + big.length) worstLag = Math.max(worstLag, at - Buffer.concat(out).length)
  }
  stream.end()
  await once(stream, 'end')
  t.ok(Buffer.concat(out).equals(expected))
  t.ok(worstLag <= B.length + 3, `inside the file at most a delimiter's length is held (held ${worstLag})`)
})

t.test('names: exact only, from Content-Disposition however it is written', async (t) => {
  const head = (disposition: string, value = 'x'): string => `--${B}\r\n${disposition}\r\n\r\n${value}\r\n`
  const model = head('Content-Disposition: form-data; name="model"', 'm')
  const close = `--${B}--\r\n`
  const cases: [string, string, boolean][] = [
    ['unquoted', 'Content-Disposition: form-data; name=response_format', true],
    ['header name in capitals, spaces', 'CONTENT-DISPOSITION :  form-data ;  name="response_format"', true],
    ['filename before the name', 'content-disposition: form-data; filename="f.json"; name="response_format"', true],
    ['name=... inside a quoted filename', 'Content-Disposition: form-data; filename="a; name=response_format"; name="image"', false],
    ['name in another header', 'X-Note: form-data; name="response_format"\r\nContent-Disposition: form-data; name="note"', false],
    ['not form-data', 'Content-Disposition: attachment; name="response_format"', false],
    ['no Content-Disposition', 'Content-Type: text/plain', false],
    ['Content-Type first', 'Content-Type: text/plain\r\nContent-Disposition: form-data; name="response_format"', true]
  ]
  for (const [label, disposition, dropped] of cases) {
    for (const first of [true, false]) {
      const part = head(disposition)
      const input = Buffer.from(first ? part + model + close : model + part + close)
      const expected = dropped ? Buffer.from(model + close) : input
      await checkEveryChunking(t, `${label}, ${first ? 'first' : 'second'}`, input, expected)
    }
  }
})

t.test('preamble and epilogue are kept; padding after a delimiter is allowed', async (t) => {
  const preamble = Buffer.from(`This is a preamble --${B}\r\n`)
  const crlfPreamble = Buffer.from('\r\n')
  const epilogue = Buffer.from(`\r\n--${B}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\nurl\r\n--${B}--\r\n`)
  for (const parts of [[FORMAT, MODEL], [MODEL, FORMAT], [FORMAT]]) {
    const label = `[${parts.map((p) => p.name).join(', ')}]`
    for (const pre of [preamble, crlfPreamble]) {
      const input = Buffer.concat([pre, form(parts), epilogue])
      await checkEveryChunking(t, `${label}, preamble ${JSON.stringify(pre.toString())}`, input, Buffer.concat([pre, without(parts), epilogue]))
    }
  }
  const padded = Buffer.from(`--${B} \t\r\nContent-Disposition: form-data; name="response_format"\r\n\r\nurl\r\n--${B}  \r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${B}--`)
  await checkEveryChunking(t, 'padded delimiter lines', padded, Buffer.from(`--${B}  \r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${B}--`))
})

t.test(`a header block over ${MAX_PART_HEADER_BYTES} bytes is not judged: the part passes as it is`, async (t) => {
  const rng = seededRandom(16)
  const disposition = 'Content-Disposition: form-data; name="response_format"\r\n'
  /** A response_format part whose header block (after the delimiter line, blank line included) is `size` bytes. */
  const part = (size: number): string => `--${B}\r\n${disposition}X-Pad: ${'p'.repeat(size - disposition.length - 'X-Pad: \r\n\r\n'.length)}\r\n\r\nurl\r\n`
  const rest = `--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${B}--\r\n`
  for (const [size, dropped] of [[MAX_PART_HEADER_BYTES, true], [MAX_PART_HEADER_BYTES + 1, false], [40_000, false]] as const) {
    for (const first of [true, false]) {
      const input = Buffer.from(first ? part(size) + rest : rest.replace(`--${B}--\r\n`, part(size) + `--${B}--\r\n`))
      const expected = dropped ? Buffer.from(rest) : input
      // The scanner that guards the gateway draws the line at the same place.
      const scanner = new MultipartScanner(B, { partStart() {}, partData() {}, partEnd() {}, formEnd() {} })
      t.equal(throws(() => scanner.write(input)), !dropped, `${size} bytes: the scanner ${dropped ? 'accepts' : 'refuses'} it too`)
      const chunkings = [[input], ...[1, 2, 3, 1000, MAX_PART_HEADER_BYTES, MAX_PART_HEADER_BYTES + 100].map((n) => fixedChunks(input, n))]
      for (let i = 0; i < 5; i++) chunkings.push(randomChunks(input, rng, 5000))
      for (const chunks of chunkings) {
        const output = await filter(chunks)
        t.ok(output.equals(expected), `${size} bytes, ${first ? 'first' : 'last'}, ${chunks.length} chunks: ${dropped ? 'dropped' : 'kept'}`)
      }
    }
  }
})

t.test('malformed bodies are passed on, not fixed', async (t) => {
  const format = `Content-Disposition: form-data; name="response_format"\r\n\r\nurl`
  const cases: [string, string, string][] = [
    ['no closing delimiter', `--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${B}\r\n${format}`, `--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm`],
    ['ends inside the headers', `--${B}\r\nContent-Disposition: form-data; name="response_format"\r\n`, `--${B}\r\nContent-Disposition: form-data; name="response_format"\r\n`],
    ['ends right after a delimiter', `--${B}\r\n${format}\r\n--${B}`, `--${B}`],
    ['junk after the boundary', `--${B}x\r\n${format}\r\n--${B}--\r\n`, `--${B}x\r\n${format}\r\n--${B}--\r\n`],
    ['a lone dash after the boundary', `--${B}-\r\n${format}\r\n--${B}--`, `--${B}-\r\n${format}\r\n--${B}--`],
    ['no delimiter at all', `just some text --${B} \r\n-${B}`, `just some text --${B} \r\n-${B}`],
    ['empty body', '', '']
  ]
  for (const [label, input, expected] of cases) await checkEveryChunking(t, label, Buffer.from(input), Buffer.from(expected))
})

function throws(fn: () => void): boolean {
  try {
    fn()
    return false
  } catch {
    return true
  }
}
