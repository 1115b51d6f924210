import { createHash } from 'node:crypto'
import { Busboy } from '@fastify/busboy'
import t from 'tap'
import { parseDisposition } from '../../src/multipart/disposition.js'
import {
  MAX_PART_HEADER_BYTES,
  MultipartScanner,
  MultipartSyntaxError,
  isValidBoundary,
  type PartInfo
} from '../../src/multipart/scanner.js'
import { int, seededRandom, type Rng } from '../helpers/random.js'

/*
 * The scanner is checked three ways on generated bodies: against what the generator put in, against
 * @fastify/busboy (an independent multipart parser), and against the body itself (every offset it
 * reports must point at the very bytes it handed out). Chunk splits are random, 1-byte included,
 * so delimiters and near-delimiters fall across chunk edges.
 */




function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng() * items.length)] as T
}

function randomBytes(rng: Rng, length: number): Buffer {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i++) out[i] = Math.floor(rng() * 256)
  return out
}

/** A short fingerprint, so a failing comparison of large bodies stays readable. */
function digest(bytes: Buffer): string {
  return `${bytes.length}:${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}`
}

// ---------------------------------------------------------------------------------------------
// The body generator
// ---------------------------------------------------------------------------------------------

/** RFC 2046 bchars (space allowed, but not last). */
const BCHARS = [..."0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=?"]

/** Boundaries real clients send, and edge cases. */
const FIXED_BOUNDARIES = [
  '----WebKitFormBoundaryX',
  '----WebKitFormBoundary7MA4YWxkTrZu0gW',
  'openai-abc',
  '--------------------------847281947520195838482011',
  'formdata-undici-0123456789',
  'a',
  '-',
  '--',
  'b'.repeat(70),
  '-'.repeat(70),
  'x y',
  "'()+_,-./:=?"
]

function makeBoundary(rng: Rng, index: number): string {
  if (index % 5 === 0) return FIXED_BOUNDARIES[(index / 5) % FIXED_BOUNDARIES.length] as string
  // Every length from 1 to 70 comes up in the first 70 non-fixed bodies, then lengths are random.
  const length = index < 90 ? 1 + (index % 70) : int(rng, 1, 70)
  let boundary = ''
  for (let i = 0; i < length; i++) boundary += i < length - 1 && rng() < 0.05 ? ' ' : pick(rng, BCHARS)
  return boundary
}

/** Bytes that look like a delimiter but are not one (RFC 2046 §5.1.1: only CRLF "--" boundary is). */
function nearDelimiter(rng: Rng, boundary: string): string {
  const partial = boundary.slice(0, int(rng, 0, boundary.length - 1))
  return pick(rng, [
    // A delimiter cut short: the next byte decides (the caller's random bytes may complete it; such
    // bodies are thrown away by the generator's own check).
    `\r\n--${partial}`,
    `\r\n--${partial}\r\n`,
    `\r\n--${partial}--`,
    `\r\n-${boundary}`,
    `\r\n-${boundary}--`,
    `\n--${boundary}\r\n`,
    `\r--${boundary}--`,
    `x--${boundary}\r\n`,
    `\r\n\r--${boundary}`,
    `\r\n--`,
    '\r\n',
    '--',
    '\r\n\r\n',
    '\r',
    '\n'
  ])
}

function crlfRun(rng: Rng): string {
  let run = ''
  const length = int(rng, 1, 8)
  for (let i = 0; i < length; i++) run += pick(rng, ['\r', '\n', '\r\n'])
  return run
}

const TEXT_PIECES = ['hello', ' ', 'A cute baby sea otter', 'héllo', '€', '😀', '日本語', 'ß', '\t', '0', 'null', '--']

function textValue(rng: Rng, boundary: string): Buffer {
  const pieces: string[] = []
  const count = rng() < 0.15 ? 0 : int(rng, 1, 12)
  for (let i = 0; i < count; i++) {
    const roll = rng()
    if (roll < 0.25) pieces.push(nearDelimiter(rng, boundary))
    else if (roll < 0.35) pieces.push(crlfRun(rng))
    else pieces.push(pick(rng, TEXT_PIECES))
  }
  if (rng() < 0.05) pieces.push('x'.repeat(int(rng, 1000, 5000)))
  return Buffer.from(pieces.join(''), 'utf8')
}

function binaryValue(rng: Rng, boundary: string): Buffer {
  const roll = rng()
  if (roll < 0.1) return Buffer.alloc(0)
  const pieces: Buffer[] = []
  const count = int(rng, 1, 10)
  for (let i = 0; i < count; i++) {
    const kind = rng()
    if (kind < 0.4) pieces.push(Buffer.from(nearDelimiter(rng, boundary), 'latin1'))
    else if (kind < 0.5) pieces.push(Buffer.from(crlfRun(rng), 'latin1'))
    else pieces.push(randomBytes(rng, int(rng, 0, rng() < 0.1 ? 70_000 : 300)))
  }
  // Half the time the part ends in something delimiter-like, right against the real delimiter.
  if (rng() < 0.5) pieces.push(Buffer.from(nearDelimiter(rng, boundary), 'latin1'))
  return Buffer.concat(pieces)
}

const FIELD_NAMES = ['prompt', 'model', 'n', 'size', 'image', 'image[]', 'mask', 'user', 'prömpt', '€uro', 'a b', 'x;y']
const FILE_NAMES = ['image.png', 'photo.jpeg', 'ü.png', 'a b.webp', '', 'x;y.png', '日本.png', 'mask.png']
const FILE_TYPES = ['image/png', 'image/jpeg', 'image/webp', 'application/octet-stream', 'IMAGE/PNG', null]
const TEXT_TYPES = [null, null, null, 'text/plain', 'text/plain; charset=utf-8']

interface GeneratedPart {
  name: string
  filename: string | null
  contentType: string | null
  body: Buffer
  /** Where the part's body starts in the whole body. */
  bodyOffset: number
}

interface GeneratedForm {
  boundary: string
  body: Buffer
  parts: GeneratedPart[]
  /** Where the closing delimiter (its leading CRLF, if any) starts. */
  closeOffset: number
}

function partHeaders(rng: Rng, name: string, filename: string | null, contentType: string | null): string {
  const dispositionName = pick(rng, ['Content-Disposition', 'content-disposition', 'CONTENT-DISPOSITION'])
  let disposition = `${dispositionName}: form-data; name="${name}"`
  if (filename !== null) disposition += `; filename="${filename}"`
  const lines = [disposition]
  if (contentType !== null) {
    const line = `${pick(rng, ['Content-Type', 'content-type'])}: ${contentType}`
    if (rng() < 0.3) lines.unshift(line)
    else lines.push(line)
  }
  if (rng() < 0.1) lines.push('X-Extra: 1')
  return `${lines.join('\r\n')}\r\n\r\n`
}

function generatePart(rng: Rng, boundary: string): Omit<GeneratedPart, 'bodyOffset'> {
  const kind = rng()
  const name = pick(rng, FIELD_NAMES)
  if (kind < 0.45) return { name, filename: null, contentType: pick(rng, TEXT_TYPES), body: textValue(rng, boundary) }
  if (kind < 0.5) {
    // A nameless blob: octet-stream and no filename (busboy calls it a file too).
    return { name, filename: null, contentType: 'application/octet-stream', body: binaryValue(rng, boundary) }
  }
  return { name, filename: pick(rng, FILE_NAMES), contentType: pick(rng, FILE_TYPES), body: binaryValue(rng, boundary) }
}

function preambleFor(rng: Rng, boundary: string): Buffer {
  const roll = rng()
  if (roll < 0.5) return Buffer.alloc(0)
  if (roll < 0.6) return Buffer.from('This is the preamble.  It is to be ignored.', 'latin1')
  if (roll < 0.7) return Buffer.from('\r\n', 'latin1')
  if (roll < 0.85) return Buffer.from(`pre${nearDelimiter(rng, boundary)}amble`, 'latin1')
  return randomBytes(rng, int(rng, 1, 200))
}

function epilogueFor(rng: Rng, boundary: string): Buffer {
  return pick(rng, [
    Buffer.alloc(0),
    Buffer.from('\r\n', 'latin1'),
    Buffer.from(`\r\nThis is the epilogue.\r\n--${boundary}\r\nnot: a part\r\n\r\n`, 'latin1'),
    randomBytes(rng, int(rng, 1, 64))
  ])
}

/** All (overlapping) positions of `needle` in `haystack`. */
function occurrences(haystack: Buffer, needle: Buffer): number[] {
  const found: number[] = []
  for (let p = haystack.indexOf(needle); p !== -1; p = haystack.indexOf(needle, p + 1)) found.push(p)
  return found
}

function tryGenerateForm(rng: Rng, boundary: string): GeneratedForm | null {
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1')
  const preamble = preambleFor(rng, boundary)
  const partCount = rng() < 0.08 ? 0 : int(rng, 1, 6)
  const pieces: Buffer[] = [preamble]
  let length = preamble.length
  // Delimiter positions in "CRLF + body", the view in which the first delimiter also starts with CRLF.
  const delimiterPositions: number[] = []
  const parts: GeneratedPart[] = []
  const push = (bytes: Buffer): void => {
    pieces.push(bytes)
    length += bytes.length
  }
  const openDelimiter = (): void => {
    const atStart = length === 0
    delimiterPositions.push(atStart ? 0 : length + 2)
    push(Buffer.from(`${atStart ? '' : '\r\n'}--${boundary}`, 'latin1'))
  }
  for (let i = 0; i < partCount; i++) {
    const part = generatePart(rng, boundary)
    openDelimiter()
    push(Buffer.from(`\r\n${partHeaders(rng, part.name, part.filename, part.contentType)}`, 'utf8'))
    parts.push({ ...part, bodyOffset: length })
    push(part.body)
  }
  const closeOffset = length
  openDelimiter()
  push(Buffer.from('--', 'latin1'))
  const closeEnd = length
  push(epilogueFor(rng, boundary))
  const body = Buffer.concat(pieces)
  // The generated content must not itself contain a delimiter (RFC 2046 §5.1.1): otherwise retry.
  const virtual = Buffer.concat([Buffer.from('\r\n'), body.subarray(0, closeEnd)])
  const found = occurrences(virtual, delimiter)
  if (found.join() !== delimiterPositions.join()) return null
  return { boundary, body, parts, closeOffset }
}

function generateForm(rng: Rng, index: number): GeneratedForm {
  const boundary = makeBoundary(rng, index)
  for (;;) {
    const form = tryGenerateForm(rng, boundary)
    if (form !== null) return form
  }
}

// ---------------------------------------------------------------------------------------------
// Running the scanner and busboy
// ---------------------------------------------------------------------------------------------

interface Piece {
  data: Buffer
  offset: number
}

interface ScannedPart {
  info: PartInfo
  pieces: Piece[]
  ended: boolean
}

interface ScanResult {
  parts: ScannedPart[]
  closeOffsets: number[]
  /** Events out of order (data outside a part, a part started inside another, ...). */
  violations: string[]
  complete: boolean
  error: unknown
}

function scan(boundary: string, chunks: readonly Buffer[], callEnd = true): ScanResult {
  const result: ScanResult = { parts: [], closeOffsets: [], violations: [], complete: false, error: null }
  let current: ScannedPart | null = null
  const scanner = new MultipartScanner(boundary, {
    partStart(info) {
      if (current !== null) result.violations.push(`partStart(${info.name}) inside part ${current.info.name}`)
      if (result.closeOffsets.length > 0) result.violations.push('partStart after formEnd')
      current = { info, pieces: [], ended: false }
      result.parts.push(current)
    },
    partData(data, offset) {
      if (current === null) result.violations.push(`partData at ${offset} outside a part`)
      else current.pieces.push({ data: Buffer.from(data), offset })
    },
    partEnd() {
      if (current === null) result.violations.push('partEnd outside a part')
      else current.ended = true
      current = null
    },
    formEnd(closeOffset) {
      if (current !== null) result.violations.push('formEnd inside a part')
      result.closeOffsets.push(closeOffset)
    }
  })
  try {
    for (const chunk of chunks) scanner.write(chunk)
    if (callEnd) scanner.end()
  } catch (err) {
    result.error = err
  }
  result.complete = scanner.complete
  return result
}

type SplitMode = 'whole' | 'bytes' | 'small' | 'large'

function split(body: Buffer, rng: Rng, mode: SplitMode, delimiterLength: number): Buffer[] {
  if (mode === 'whole') return [body]
  const chunks: Buffer[] = []
  let at = 0
  while (at < body.length) {
    const size = mode === 'bytes' ? 1 : mode === 'small' ? int(rng, 1, delimiterLength + 4) : int(rng, 1, 8192)
    chunks.push(body.subarray(at, at + size))
    at += size
  }
  return chunks
}

interface PartSummary {
  name: string
  filename: string | null
  contentType: string | null
  body: string
}

function summariseGenerated(form: GeneratedForm): PartSummary[] {
  return form.parts.map((p) => ({ name: p.name, filename: p.filename, contentType: p.contentType, body: digest(p.body) }))
}

function summariseScanned(result: ScanResult): PartSummary[] {
  return result.parts.map((p) => ({
    name: p.info.name,
    filename: p.info.filename,
    contentType: p.info.contentType,
    body: digest(Buffer.concat(p.pieces.map((piece) => piece.data)))
  }))
}

/** busboy lowercases the media type, drops its parameters and calls a typeless part text/plain. */
function busboyView(parts: readonly PartSummary[]): PartSummary[] {
  return parts.map((p) => ({
    ...p,
    contentType: (p.contentType ?? 'text/plain').split(';')[0]?.trim().toLowerCase() ?? null
  }))
}

function busboyParse(boundary: string, chunks: readonly Buffer[]): Promise<PartSummary[]> {
  return new Promise((resolve, reject) => {
    const parts: PartSummary[] = []
    const parser = Busboy({
      headers: { 'content-type': `multipart/form-data; boundary="${boundary}"` },
      preservePath: true
    })
    parser.on('field', (name: string, value: string, _nameTruncated: boolean, valueTruncated: boolean, _encoding: string, mimeType: string) => {
      if (valueTruncated) reject(new Error(`busboy truncated field ${name}`))
      parts.push({ name, filename: null, contentType: mimeType, body: digest(Buffer.from(value, 'utf8')) })
    })
    parser.on('file', (name: string, stream: NodeJS.ReadableStream, filename: string | undefined, _encoding: string, mimeType: string) => {
      const entry: PartSummary = { name, filename: filename ?? null, contentType: mimeType, body: '' }
      parts.push(entry)
      const data: Buffer[] = []
      stream.on('data', (chunk: Buffer) => data.push(chunk))
      stream.on('end', () => {
        entry.body = digest(Buffer.concat(data))
      })
    })
    parser.on('error', reject)
    parser.on('finish', () => resolve(parts))
    for (const chunk of chunks) parser.write(chunk)
    parser.end()
  })
}

// ---------------------------------------------------------------------------------------------
// The differential test
// ---------------------------------------------------------------------------------------------

const BODY_COUNT = 320

t.test(`${BODY_COUNT} generated bodies: scanner = generator = busboy, offsets point at the bytes`, async (t) => {
  const rng = seededRandom(0x5eed)
  let partsSeen = 0
  for (let index = 0; index < BODY_COUNT; index++) {
    const form = generateForm(rng, index)
    const { boundary, body } = form
    const delimiterLength = boundary.length + 4
    const expected = summariseGenerated(form)
    partsSeen += expected.length
    const label = `body ${index} (boundary ${JSON.stringify(boundary)}, ${body.length} bytes, ${expected.length} parts)`

    const fromBusboy = await busboyParse(boundary, split(body, rng, 'large', delimiterLength))
    t.same(fromBusboy, busboyView(expected), `${label}: busboy reads what the generator wrote`)

    const modes: SplitMode[] = [body.length <= 40_000 ? 'bytes' : 'small', 'small', 'large', 'whole']
    for (const mode of modes) {
      const result = scan(boundary, split(body, rng, mode, delimiterLength))
      const where = `${label}, ${mode} chunks`
      if (result.error !== null) {
        t.fail(`${where}: threw ${String(result.error)}`)
        continue
      }
      const scanned = summariseScanned(result)
      const problems: string[] = [...result.violations]
      if (!result.complete) problems.push('scanner.complete is false after the close')
      if (result.parts.some((p) => !p.ended)) problems.push('a part got no partEnd')
      result.parts.forEach((part, i) => {
        let next = form.parts[i]?.bodyOffset ?? -1
        for (const piece of part.pieces) {
          if (piece.data.length === 0) problems.push(`part ${i}: an empty partData`)
          if (!body.subarray(piece.offset, piece.offset + piece.data.length).equals(piece.data)) {
            problems.push(`part ${i}: partData at ${piece.offset} (${piece.data.length} bytes) is not the body's bytes there`)
          }
          if (piece.offset !== next) problems.push(`part ${i}: partData at ${piece.offset}, expected ${next}`)
          next = piece.offset + piece.data.length
        }
      })
      t.same(problems, [], `${where}: events in order, every partData offset exact`)
      t.same(scanned, expected, `${where}: parts as generated`)
      t.same(busboyView(scanned), fromBusboy, `${where}: parts as busboy reads them`)
      t.same(result.closeOffsets, [form.closeOffset], `${where}: one formEnd at the closing delimiter`)
      const close = body.subarray(form.closeOffset)
      const closeText = form.closeOffset === 0 ? `--${boundary}--` : `\r\n--${boundary}--`
      t.ok(close.subarray(0, closeText.length).equals(Buffer.from(closeText, 'latin1')), `${where}: closeOffset opens ${JSON.stringify(closeText)}`)
    }
  }
  t.ok(partsSeen > BODY_COUNT, `the bodies held ${partsSeen} parts`)
})

// ---------------------------------------------------------------------------------------------
// Hand-written bodies
// ---------------------------------------------------------------------------------------------

const CD = 'Content-Disposition: form-data'

function bytes(text: string): Buffer {
  return Buffer.from(text, 'utf8')
}

function pieceText(part: ScannedPart | undefined): string {
  return Buffer.concat(part?.pieces.map((p) => p.data) ?? []).toString('utf8')
}

t.test('formEnd offsets', async (t) => {
  const empty = scan('b', [bytes('--b--')])
  t.same(empty.closeOffsets, [0], 'an empty form: the close opens the body')
  t.equal(empty.parts.length, 0)
  const emptyWithPreamble = scan('b', [bytes('pre\r\n--b--\r\n')])
  t.same(emptyWithPreamble.closeOffsets, [3], 'an empty form after a preamble: at the CRLF')
  const one = bytes(`--b\r\n${CD}; name="a"\r\n\r\nxyz\r\n--b--`)
  const result = scan('b', [one])
  t.same(result.closeOffsets, [one.length - 7])
  t.equal(one.subarray(result.closeOffsets[0]).toString('latin1'), '\r\n--b--')
  const emptyPart = bytes(`--b\r\n${CD}; name="a"\r\n\r\n\r\n--b--`)
  const emptyResult = scan('b', [emptyPart])
  t.same(emptyResult.closeOffsets, [emptyPart.length - 7])
  t.same(emptyResult.parts[0]?.pieces, [], 'an empty part has no partData')
  t.equal(emptyResult.parts[0]?.ended, true)
})

t.test('transport padding after a boundary is allowed (RFC 2046 §5.1.1)', async (t) => {
  const body = bytes(`--b \t \r\n${CD}; name="a"\r\n\r\nv\r\n--b\t\r\n${CD}; name="c"\r\n\r\nw\r\n--b--`)
  for (const chunks of [[body], [...body].map((byte) => Buffer.from([byte]))]) {
    const result = scan('b', chunks)
    t.equal(result.error, null)
    t.same(result.parts.map((p) => [p.info.name, pieceText(p)]), [['a', 'v'], ['c', 'w']])
  }
})

t.test('the epilogue is ignored, whatever it holds', async (t) => {
  const body = bytes(`--b\r\n${CD}; name="a"\r\n\r\nv\r\n--b--\r\n--b\r\n${CD}; name="late"\r\n\r\nx\r\n--b--junk`)
  const result = scan('b', [body])
  t.equal(result.error, null)
  t.same(result.parts.map((p) => p.info.name), ['a'])
  t.equal(result.complete, true)
})

t.test('part headers: Content-Type kept as sent, unknown headers ignored, no space after the colon', async (t) => {
  const body = bytes(
    `--b\r\ncontent-type:  Image/PNG \r\nX-Other: 1\r\ncontent-disposition:form-data; name="image[]"; filename="a.png"\r\n\r\nPNG\r\n--b--`
  )
  const result = scan('b', [body])
  t.same(result.parts[0]?.info, { name: 'image[]', filename: 'a.png', contentType: 'Image/PNG' })
})

function syntaxError(boundary: string, chunks: readonly Buffer[], callEnd = true): unknown {
  return scan(boundary, chunks, callEnd).error
}

function bytewise(body: Buffer): Buffer[] {
  return [...body].map((byte) => Buffer.from([byte]))
}

t.test('errors are MultipartSyntaxError', async (t) => {
  const ok = `--b\r\n${CD}; name="a"\r\n\r\nvalue\r\n--b--`
  const cases: [string, string][] = [
    ['an empty body', ''],
    ['only a preamble', 'just some text\r\n'],
    ['a body cut inside a part', ok.slice(0, ok.indexOf('value') + 3)],
    ['a body cut inside the part headers', `--b\r\n${CD}; na`],
    ['a body cut right after the closing boundary', ok.slice(0, -2)],
    ['a body cut after one closing dash', ok.slice(0, -1)],
    ['a body cut inside the closing delimiter', ok.slice(0, -4)]
  ]
  for (const [what, text] of cases) {
    for (const chunks of [[bytes(text)], bytewise(bytes(text))]) {
      const err = syntaxError('b', chunks)
      t.ok(err instanceof MultipartSyntaxError, `${what}: end() throws MultipartSyntaxError (${chunks.length} chunks)`)
      t.match(String(err), /ended before its closing boundary/, `${what}: says the body ended early`)
    }
  }
  t.equal(syntaxError('b', [bytes(ok)]), null, 'the uncut body is fine')

  const junk: [string, string][] = [
    ['junk right after a boundary', `--b\r\n${CD}; name="a"\r\n\r\nv\r\n--bX\r\n${CD}; name="c"\r\n\r\nw\r\n--b--`],
    ['junk after the first boundary', `--bb\r\n${CD}; name="a"\r\n\r\nv\r\n--b--`],
    ['junk after padding', `--b  x\r\n${CD}; name="a"\r\n\r\nv\r\n--b--`],
    ['a single dash after a boundary', `--b\r\n${CD}; name="a"\r\n\r\nv\r\n--b-x`],
    ['CR not followed by LF', `--b\rX${CD}; name="a"\r\n\r\nv\r\n--b--`],
    ['a part with no Content-Disposition', `--b\r\nContent-Type: text/plain\r\n\r\nv\r\n--b--`],
    ['a part with no headers at all', `--b\r\n\r\nv\r\n--b--`],
    ['a Content-Disposition with no name', `--b\r\n${CD}; filename="a.png"\r\n\r\nv\r\n--b--`],
    ['a Content-Disposition that is not form-data', `--b\r\nContent-Disposition: attachment; name="a"\r\n\r\nv\r\n--b--`],
    ['a header line with no name', `--b\r\n${CD}; name="a"\r\n: x\r\n\r\nv\r\n--b--`],
    ['a header line with no colon', `--b\r\n${CD}; name="a"\r\nnonsense\r\n\r\nv\r\n--b--`]
  ]
  for (const [what, text] of junk) {
    for (const chunks of [[bytes(text)], bytewise(bytes(text))]) {
      const err = syntaxError('b', chunks)
      t.ok(err instanceof MultipartSyntaxError, `${what}: MultipartSyntaxError (${chunks.length} chunks), got ${String(err)}`)
    }
  }
})

t.test(`part headers over MAX_PART_HEADER_BYTES (${MAX_PART_HEADER_BYTES})`, async (t) => {
  const headerWith = (fillerBytes: number): Buffer =>
    bytes(`--b\r\n${CD}; name="a"\r\nX-Filler: ${'f'.repeat(fillerBytes)}\r\n\r\nv\r\n--b--`)
  const fixed = `${CD}; name="a"\r\nX-Filler: \r\n\r\n`.length
  const under = headerWith(MAX_PART_HEADER_BYTES - fixed - 100)
  t.equal(syntaxError('b', [under]), null, 'a header block 100 bytes under the cap is fine')
  t.same(scan('b', [under]).parts.map((p) => pieceText(p)), ['v'])
  const over = headerWith(MAX_PART_HEADER_BYTES + 1)
  t.ok(syntaxError('b', [over]) instanceof MultipartSyntaxError, 'over the cap, in one chunk')
  t.ok(syntaxError('b', split(over, seededRandom(7), 'small', 5)) instanceof MultipartSyntaxError, 'over the cap, in small chunks')
  const endless = bytes(`--b\r\n${CD}; name="a"\r\nX-Filler: ${'f'.repeat(MAX_PART_HEADER_BYTES * 4)}`)
  t.ok(
    syntaxError('b', [endless], false) instanceof MultipartSyntaxError,
    'a header block that never ends is refused while writing, not buffered'
  )
})

t.test('isValidBoundary', async (t) => {
  for (const boundary of ['a', '-', '----WebKitFormBoundaryX', 'openai-abc', 'x'.repeat(70), "'()+_,-./:=? x"]) {
    t.equal(isValidBoundary(boundary), true, JSON.stringify(boundary))
  }
  for (const boundary of ['', 'x'.repeat(71), 'a\r\nb', 'a\rb', 'a\nb', 'é', 'a\u0000b', 'a\u007fb']) {
    t.equal(isValidBoundary(boundary), false, JSON.stringify(boundary))
  }
})

t.test('parseDisposition', async (t) => {
  t.same(parseDisposition('form-data; name="prompt"'), { name: 'prompt', filename: null })
  t.same(parseDisposition('form-data; name=prompt'), { name: 'prompt', filename: null }, 'an unquoted name')
  t.same(parseDisposition('Form-Data; NAME="a"'), { name: 'a', filename: null }, 'case-insensitive type and keys')
  t.same(parseDisposition('form-data; name="say \\"hi\\""'), { name: 'say "hi"', filename: null }, 'escaped quotes')
  t.same(parseDisposition('form-data; name="a\\\\b"'), { name: 'a\\b', filename: null }, 'an escaped backslash')
  t.same(parseDisposition('form-data; name="x;y"; filename="a;b.png"'), { name: 'x;y', filename: 'a;b.png' }, 'semicolons in quotes')
  t.same(parseDisposition('form-data; name="image"; filename="cat.png"'), { name: 'image', filename: 'cat.png' })
  t.same(
    parseDisposition(`form-data; name="image"; filename="euro.png"; filename*=UTF-8''%E2%82%AC.png`),
    { name: 'image', filename: '€.png' },
    'filename* is preferred over filename (RFC 6266 §4.3)'
  )
  t.same(
    parseDisposition(`form-data; name="image"; filename*=UTF-8''%E2%82%AC.png; filename="euro.png"`),
    { name: 'image', filename: '€.png' },
    'whichever comes first'
  )
  t.same(parseDisposition(`form-data; name="image"; filename*=utf-8'en'%E2%82%AC.png`), { name: 'image', filename: '€.png' }, 'with a language')
  t.same(
    parseDisposition(`form-data; name="image"; filename="fallback.png"; filename*=UTF-8''%E2%82`),
    { name: 'image', filename: 'fallback.png' },
    'an undecodable filename* falls back to filename'
  )
  t.same(parseDisposition('form-data; name="image"; filename=""'), { name: 'image', filename: '' }, 'an empty filename is still a file')
  t.same(parseDisposition('form-data; name=""'), { name: '', filename: null }, 'an empty name is a name')
  t.equal(parseDisposition('attachment; name="a"; filename="a.png"'), null, 'not form-data')
  t.equal(parseDisposition('inline'), null)
  t.equal(parseDisposition('form-data'), null, 'no name')
  t.equal(parseDisposition('form-data; filename="a.png"'), null, 'a filename but no name')
})
