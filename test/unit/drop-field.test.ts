import { Readable } from 'node:stream'
import { Busboy } from '@fastify/busboy'
import t from 'tap'
import { dropFormFields } from '../../src/multipart/drop-field.js'
import { buildMultipart, type Part } from '../helpers/multipart.js'
import { int, seededRandom } from '../helpers/random.js'

const BOUNDARY = 'test-boundary-7f3a9c'
const DROP: ReadonlySet<string> = new Set(['response_format'])
const FORMAT: Part = { name: 'response_format', value: 'url' }
const PROMPT: Part = { name: 'prompt', value: 'a boat --test-boundary-7f3a9c in the text' }
const MODEL: Part = { name: 'model', value: 'gpt-image-1' }
const small = (seed: number): Part => ({ name: 'image', filename: 'a.png', data: Buffer.from(`file ${seed} \r\n--not-the-boundary\r\n`) })

async function filter(body: Buffer, chunkSizes: (i: number) => number, names = DROP): Promise<Buffer> {
  const chunks: Buffer[] = []
  for (let at = 0, i = 0; at < body.length; i++) {
    const size = Math.max(1, chunkSizes(i))
    chunks.push(body.subarray(at, at + size))
    at += size
  }
  const out: Buffer[] = []
  for await (const chunk of Readable.from(chunks).pipe(dropFormFields(BOUNDARY, names))) out.push(chunk as Buffer)
  return Buffer.concat(out)
}

function form(parts: Part[]): Buffer {
  return buildMultipart(parts, BOUNDARY).body
}

async function parse(body: Buffer): Promise<{ fields: Record<string, string>; files: Record<string, Buffer> }> {
  const fields: Record<string, string> = {}
  const files: Record<string, Buffer> = {}
  const parser = new Busboy({ headers: { 'content-type': `multipart/form-data; boundary=${BOUNDARY}` } })
  parser.on('field', (name: string, value: string) => (fields[name] = value))
  parser.on('file', (name: string, stream: Readable) => {
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    stream.on('end', () => (files[name] = Buffer.concat(chunks)))
  })
  await new Promise<void>((resolve, reject) => {
    parser.on('finish', resolve)
    parser.on('error', reject)
    parser.end(body)
  })
  return { fields, files }
}

t.test('the named part goes, wherever it is, at every chunking; everything else is kept byte for byte', async (t) => {
  const layouts: Part[][] = [
    [FORMAT, MODEL, PROMPT, small(1)],
    [MODEL, FORMAT, PROMPT, small(2)],
    [MODEL, PROMPT, small(3), FORMAT],
    [FORMAT],
    [FORMAT, FORMAT, MODEL],
    [MODEL, PROMPT]
  ]
  for (const parts of layouts) {
    const input = form(parts)
    const expected = form(parts.filter((p) => p.name !== 'response_format'))
    const label = parts.map((p) => p.name).join(',')
    for (let size = 1; size <= input.length; size++) {
      const output = await filter(input, () => size)
      if (!output.equals(expected)) {
        t.fail(`${label}, chunks of ${size}: ${JSON.stringify(output.toString('latin1'))}`)
        return
      }
    }
    t.pass(`${label}: every chunk size`)
  }
})

t.test('multi-megabyte files before and after, random chunks, parsed back', async (t) => {
  const rng = seededRandom(42)
  const big = Buffer.alloc(3 * 1024 * 1024)
  for (let i = 0; i < big.length; i++) big[i] = int(rng, 0, 255)
  const parts: Part[] = [
    { name: 'image[]', filename: 'one.png', data: big },
    FORMAT,
    MODEL,
    { name: 'mask', filename: 'mask.png', data: big.subarray(1000) },
    PROMPT
  ]
  const expected = form(parts.filter((p) => p !== FORMAT))
  for (let round = 0; round < 5; round++) {
    const output = await filter(form(parts), () => int(rng, 1, 200_000))
    t.ok(output.equals(expected), `round ${round}`)
  }
  const parsed = await parse(await filter(form(parts), () => 65_536))
  t.strictSame(parsed.fields, { model: 'gpt-image-1', prompt: PROMPT.value })
  t.ok(parsed.files['image[]']?.equals(big))
  t.ok(parsed.files.mask?.equals(big.subarray(1000)))
})

t.test('only exact names match; unquoted names, file parts, preamble and epilogue', async (t) => {
  const kept = form([{ name: 'response_format_x', value: 'a' }, { name: 'xresponse_format', value: 'b' }, MODEL])
  t.ok((await filter(kept, () => 7)).equals(kept), 'prefixes and suffixes are other names')
  const unquoted = Buffer.from(
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name=response_format\r\n\r\nurl\r\n--${BOUNDARY}\r\ncontent-disposition: form-data; name="model"\r\n\r\nm\r\n--${BOUNDARY}--\r\n`
  )
  t.equal((await filter(unquoted, () => 5)).toString(), `--${BOUNDARY}\r\ncontent-disposition: form-data; name="model"\r\n\r\nm\r\n--${BOUNDARY}--\r\n`)
  const file = form([{ name: 'response_format', filename: 'x.png', data: Buffer.from('png') }, MODEL])
  t.ok((await filter(file, () => 3)).equals(form([MODEL])), 'a file part of that name goes too')
  const withEnds = Buffer.concat([Buffer.from('preamble\r\n'), form([MODEL, FORMAT]), Buffer.from('epilogue --test-boundary-7f3a9c\r\n')])
  const expected = Buffer.concat([Buffer.from('preamble\r\n'), form([MODEL]), Buffer.from('epilogue --test-boundary-7f3a9c\r\n')])
  t.ok((await filter(withEnds, () => 4)).equals(expected), 'preamble and epilogue kept')
})

t.test('headers past 16 KiB, and malformed bodies, pass as they are', async (t) => {
  const long = Buffer.from(
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="response_format"\r\nX-Pad: ${'p'.repeat(20_000)}\r\n\r\nurl\r\n--${BOUNDARY}--\r\n`
  )
  t.ok((await filter(long, () => 1000)).equals(long))
  const truncated = Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n`)
  t.ok((await filter(truncated, () => 6)).equals(truncated), 'headers that never end are passed on at the end')
})
