import t, { type Test } from 'tap'
import { UsageTap, type TappedUsage } from '../../src/billing/usage-tap.js'
import { int, seededRandom, type Rng } from '../helpers/random.js'

/*
 * The tap must learn from a piped answer what JSON.parse would have told us, whatever the chunking.
 * Most checks therefore compare against JSON.parse of the whole body (the oracle) and feed the
 * same body under many splits: fixed sizes, seeded random sizes, every 2-way split of small tricky
 * bodies, and 1-byte chunks, so that quotes, backslash runs, keys and numbers fall across chunk edges.
 */




type Kind = 'json' | 'event-stream'

function tapChunks(kind: Kind, chunks: Iterable<Buffer>, maxCapturedBytes?: number): TappedUsage {
  const tap = maxCapturedBytes === undefined ? new UsageTap(kind) : new UsageTap(kind, maxCapturedBytes)
  for (const chunk of chunks) tap.push(chunk)
  return tap.result()
}

function* fixedChunks(body: Buffer, size: number): Generator<Buffer> {
  for (let i = 0; i < body.length; i += size) yield body.subarray(i, i + size)
}

function* randomChunks(body: Buffer, rng: Rng, maxSize: number): Generator<Buffer> {
  let i = 0
  while (i < body.length) {
    const size = rng() < 0.2 ? int(rng, 1, 3) : int(rng, 1, maxSize)
    yield body.subarray(i, i + size)
    i += size
  }
}

function tapWhole(kind: Kind, body: string | Buffer, maxCapturedBytes?: number): TappedUsage {
  return tapChunks(kind, [Buffer.from(body)], maxCapturedBytes)
}

/** What JSON.parse says the answer contained. */
function oracle(body: string | Buffer): TappedUsage {
  const parsed = JSON.parse(body.toString()) as unknown
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return { imagesReturned: null, usage: null, partialImages: 0 }
  }
  const record = parsed as Record<string, unknown>
  const data = record['data']
  return {
    imagesReturned: Array.isArray(data) ? data.length : null,
    usage: Object.hasOwn(record, 'usage') ? record['usage'] : null,
    partialImages: 0
  }
}

/** Every split the tests use, on one body; all must agree with `expected`. */
function checkAllSplits(
  t: Test,
  kind: Kind,
  body: Buffer,
  expected: TappedUsage,
  options: { oneByte?: boolean; everyTwoWay?: boolean; seeds?: number; maxSize?: number } = {}
): void {
  const { oneByte = true, everyTwoWay = true, seeds = 8, maxSize = 64 } = options
  let mismatches = 0
  const note = (result: TappedUsage, how: string): void => {
    if (mismatches > 3) return
    const same = JSON.stringify(result) === JSON.stringify(expected)
    if (!same) {
      mismatches++
      t.strictSame(result, expected, how)
    }
  }
  note(tapWhole(kind, body), 'one chunk')
  if (oneByte) note(tapChunks(kind, fixedChunks(body, 1)), '1-byte chunks')
  if (everyTwoWay) {
    for (let cut = 1; cut < body.length; cut++) {
      note(tapChunks(kind, [body.subarray(0, cut), body.subarray(cut)]), `split at ${cut}`)
    }
  }
  for (let seed = 1; seed <= seeds; seed++) {
    note(tapChunks(kind, randomChunks(body, seededRandom(seed), maxSize)), `random split, seed ${seed}`)
  }
  t.equal(mismatches, 0, 'every split gives the same result')
}

const gptUsage = {
  total_tokens: 6240,
  input_tokens: 50,
  output_tokens: 6190,
  input_tokens_details: { text_tokens: 10, image_tokens: 40 },
  output_tokens_details: { image_tokens: 6100, text_tokens: 90 }
}

function b64(length: number, seed: number): string {
  const rng = seededRandom(seed)
  const bytes = Buffer.alloc(Math.ceil((length * 3) / 4))
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rng() * 256)
  return bytes.toString('base64').slice(0, length)
}

t.test('gpt-image answers: data counted, usage parsed, whatever the key order and layout', async (t) => {
  const images = [{ b64_json: b64(300, 1) }, { b64_json: b64(200, 2) }]
  const orders: Record<string, unknown>[] = [
    { created: 1713833628, data: images, background: 'opaque', output_format: 'png', size: '1024x1024', quality: 'high', usage: gptUsage },
    { usage: gptUsage, created: 1713833628, data: images, quality: 'high' },
    { created: 1713833628, usage: gptUsage, size: '1536x1024', data: images, output_format: 'webp' }
  ]
  for (const [index, answer] of orders.entries()) {
    for (const [layout, body] of [
      ['pretty', JSON.stringify(answer, null, 2)],
      ['compact', JSON.stringify(answer)]
    ] as const) {
      const expected = { imagesReturned: 2, usage: gptUsage, partialImages: 0 }
      t.strictSame(tapWhole('json', body), expected, `order ${index}, ${layout}`)
      checkAllSplits(t, 'json', Buffer.from(body), expected, { everyTwoWay: layout === 'compact' })
    }
  }
})

t.test('a 15 MB answer (3 x 5 MB b64_json) gives one result for every split', async (t) => {
  const image = b64(5 * 1024 * 1024, 7)
  const answer = {
    created: 1713833628,
    data: [{ b64_json: image }, { b64_json: image }, { b64_json: image }],
    background: 'opaque',
    output_format: 'png',
    size: '1024x1536',
    quality: 'high',
    usage: gptUsage
  }
  const expected = { imagesReturned: 3, usage: gptUsage, partialImages: 0 }
  for (const [layout, text] of [
    ['pretty', JSON.stringify(answer, null, 2)],
    ['compact', JSON.stringify(answer)]
  ] as const) {
    const body = Buffer.from(text)
    t.strictSame(tapChunks('json', fixedChunks(body, 64 * 1024)), expected, `${layout}, 64 KiB chunks`)
    for (let seed = 1; seed <= 4; seed++) {
      t.strictSame(tapChunks('json', randomChunks(body, seededRandom(seed), 256 * 1024)), expected, `${layout}, random split ${seed}`)
    }
  }
})

t.test('a smaller body fed 1 byte at a time, and split everywhere', async (t) => {
  const answer = {
    created: 1,
    data: [
      { b64_json: b64(2000, 3), revised_prompt: 'a "quoted" \\ path\\\\ with ] } , and "usage": {"total_tokens": 9}' },
      { b64_json: b64(1500, 4) }
    ],
    usage: gptUsage
  }
  const body = Buffer.from(JSON.stringify(answer, null, 2))
  checkAllSplits(t, 'json', body, { imagesReturned: 2, usage: gptUsage, partialImages: 0 }, { seeds: 32, maxSize: 16 })
})

t.test('dall-e answers: url and revised_prompt, no usage', async (t) => {
  const dalle3 = JSON.stringify({
    created: 1713833628,
    data: [{ url: 'https://oaidalleapiprodscus.blob.core.windows.net/private/img.png?st=2024&sig=a%2Bb', revised_prompt: 'A cat, "usage" free' }]
  })
  t.strictSame(tapWhole('json', dalle3), { imagesReturned: 1, usage: null, partialImages: 0 })
  checkAllSplits(t, 'json', Buffer.from(dalle3), { imagesReturned: 1, usage: null, partialImages: 0 })

  const dalle2 = JSON.stringify({ created: 1, data: [{ url: 'https://a/1' }, { url: 'https://a/2' }, { url: 'https://a/3' }] }, null, 2)
  t.strictSame(tapWhole('json', dalle2), { imagesReturned: 3, usage: null, partialImages: 0 })

  for (const empty of ['{"created":1,"data":[]}', '{\n  "created": 1,\n  "data": [ ]\n}', '{"data":[\n\n]}']) {
    t.strictSame(tapWhole('json', empty), { imagesReturned: 0, usage: null, partialImages: 0 }, JSON.stringify(empty))
  }
  t.strictSame(tapWhole('json', '{"created":1}'), { imagesReturned: null, usage: null, partialImages: 0 }, 'no data at all')
  t.strictSame(tapWhole('json', '{"created":1,"data":null}'), { imagesReturned: null, usage: null, partialImages: 0 }, 'data: null')
})

t.test('escapes, brackets and the text "usage" inside strings are not structure', async (t) => {
  const tricky = [
    'ends with a backslash \\',
    'escaped quote \\" and more',
    'escaped backslash then quote \\\\" no',
    'three backslashes \\\\\\" still inside',
    '] } , : { [',
    '"usage": {"total_tokens": 999}',
    '","usage":{"total_tokens":1},"x":"',
    'unicode é ✓ 𝄞 \u0000 \n\t'
  ]
  for (const [index, text] of tricky.entries()) {
    const body = JSON.stringify({ data: [{ b64_json: 'AAAA', revised_prompt: text }, { url: text }], note: text, usage: { total_tokens: 3 } })
    const expected = { imagesReturned: 2, usage: { total_tokens: 3 }, partialImages: 0 }
    t.strictSame(oracle(body), expected, `oracle agrees on case ${index}`)
    checkAllSplits(t, 'json', Buffer.from(body), expected)
  }

  // Raw bodies with escapes JSON.stringify would not write.
  const raw = [
    '{"us\\u0061ge":{"total_tokens":5},"d\\u0061ta":[{}]}',
    '{"usage\\"":{"total_tokens":5},"data":[{},{}]}',
    '{"\\"usage":1,"usage\\\\":2,"data":[{}],"usage":{"a":[1,{"b":"\\\\"}]}}',
    '{"data":["\\\\","\\"",1,true,null,[],{}],"usage":null}',
    '{"data":[[1,2],[3]],"usage":-1.5e+3}'
  ]
  for (const body of raw) checkAllSplits(t, 'json', Buffer.from(body), oracle(body))
})

t.test('only the top-level usage and data count', async (t) => {
  const body = JSON.stringify({
    created: 1,
    data: [
      { b64_json: 'AAAA', usage: { total_tokens: 111 }, data: [1, 2, 3] },
      { b64_json: 'BBBB', nested: { usage: { total_tokens: 222 }, data: [] } }
    ],
    meta: { usage: { total_tokens: 333 }, data: [1] }
  })
  checkAllSplits(t, 'json', Buffer.from(body), { imagesReturned: 2, usage: null, partialImages: 0 })
})

t.test('long keys are skipped, not collected', async (t) => {
  const long = 'usage'.repeat(100)
  const body = JSON.stringify({ [long]: { total_tokens: 9 }, ['data' + 'x'.repeat(300)]: [1, 2], data: [{}], usage: { total_tokens: 1 } })
  checkAllSplits(t, 'json', Buffer.from(body), { imagesReturned: 1, usage: { total_tokens: 1 }, partialImages: 0 })
})

t.test('push never throws, even when misused', async (t) => {
  for (const kind of ['json', 'event-stream'] as const) {
    const tap = new UsageTap(kind)
    t.doesNotThrow(() => tap.push(null as unknown as Buffer))
    t.doesNotThrow(() => tap.push(Buffer.from('{"data":[]}')))
    t.strictSame(tap.result(), { imagesReturned: null, usage: null, partialImages: 0 }, `${kind}: a broken tap reports nothing more`)
  }
})

t.test('duplicate top-level keys: the last one wins, as with JSON.parse', async (t) => {
  const body = '{"data":[{},{}],"usage":{"total_tokens":1},"data":[{}],"usage":{"total_tokens":2}}'
  checkAllSplits(t, 'json', Buffer.from(body), { imagesReturned: 1, usage: { total_tokens: 2 }, partialImages: 0 })
})

t.test('a usage value over the cap is given up (null), not truncated', async (t) => {
  const usage = { total_tokens: 100, input_tokens: 50, output_tokens: 50 }
  const compact = JSON.stringify(usage)
  const body = Buffer.from(JSON.stringify({ data: [{ b64_json: 'AAAA' }], usage }))
  t.strictSame(tapWhole('json', body, compact.length), { imagesReturned: 1, usage, partialImages: 0 }, 'exactly at the cap')
  t.strictSame(tapWhole('json', body, compact.length - 1), { imagesReturned: 1, usage: null, partialImages: 0 }, 'one byte over')
  t.strictSame(tapChunks('json', fixedChunks(body, 1), compact.length - 1), { imagesReturned: 1, usage: null, partialImages: 0 }, 'one byte over, 1-byte chunks')

  const huge = JSON.stringify({ data: [{}], usage: { total_tokens: 1, pad: 'x'.repeat(70 * 1024) } })
  t.strictSame(tapWhole('json', huge), { imagesReturned: 1, usage: null, partialImages: 0 }, 'default cap is 64 KiB')
  t.throws(() => new UsageTap('json', -1), RangeError)
})

t.test('truncated and invalid JSON never throw and keep what was learnt', async (t) => {
  const body = JSON.stringify({ created: 1, data: [{ b64_json: 'AAAA' }, { b64_json: 'BB\\"BB' }], usage: gptUsage })
  const usageAt = body.indexOf('"usage"')
  let problems = 0
  for (let cut = 0; cut <= body.length; cut++) {
    const prefix = Buffer.from(body.slice(0, cut))
    let result: TappedUsage | undefined
    try {
      result = tapChunks('json', fixedChunks(prefix, 3))
    } catch {
      problems++
      continue
    }
    const complete = cut === body.length || cut === body.length - 1
    if (complete ? result.usage === null : result.usage !== null) problems++
    if (cut > usageAt && result.imagesReturned !== 2) problems++
  }
  t.equal(problems, 0, 'every prefix: no throw, usage only once complete, data count kept')

  const invalid = [
    '',
    'null',
    '"data"',
    '[{"data":[{}],"usage":{"total_tokens":1}}]',
    ']]]}}}',
    '{"data":[{}]]]]}',
    '{"data" [1,2], "usage" {"a":1}}',
    '{"usage":{"total_tokens":1,}}',
    '{"usage":{"total_tokens":1}',
    '\ufeff{"data":[]}',
    '<html>502 Bad Gateway</html>'
  ]
  for (const text of invalid) {
    t.doesNotThrow(() => tapChunks('json', fixedChunks(Buffer.from(text), 1)), JSON.stringify(text))
  }
  t.strictSame(tapWhole('json', '[{"data":[{}],"usage":{"total_tokens":1}}]'), { imagesReturned: null, usage: null, partialImages: 0 }, 'top-level array teaches nothing')
  t.strictSame(tapWhole('json', '{"usage":{"total_tokens":1,}, "data":[{}]}'), { imagesReturned: 1, usage: null, partialImages: 0 }, 'unparsable usage is null')
  t.strictSame(tapWhole('json', '{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'), { imagesReturned: null, usage: null, partialImages: 0 }, 'error body')

  const rng = seededRandom(99)
  for (let round = 0; round < 200; round++) {
    const garbage = Buffer.alloc(int(rng, 1, 400))
    for (let i = 0; i < garbage.length; i++) garbage[i] = rng() < 0.5 ? Math.floor(rng() * 256) : '{}[]",:\\ 1ausage'.charCodeAt(int(rng, 0, 16))
    const tap = new UsageTap(round % 2 === 0 ? 'json' : 'event-stream')
    for (const chunk of randomChunks(Buffer.concat([Buffer.from(round % 2 === 0 ? '{' : 'data: {'), garbage]), rng, 20)) tap.push(chunk)
    tap.result()
  }
  t.pass('random garbage, both kinds')
})

/** Random JSON with hand-written serialisation: \u escapes, odd whitespace, keys in any order. */
function randomAnswer(rng: Rng): string {
  const alphabet = ['a', 'b', 'usage', 'data', '"', '\\', ']', '}', ',', ':', '{', '[', ' ', 'é', '\n', '𝄞', 'A', '/']
  const ws = (): string => ['', ' ', '\n  ', '\t', '\r\n'][int(rng, 0, 4)] as string
  const str = (s: string): string => {
    let out = '"'
    for (const ch of s) {
      const r = rng()
      if (ch === '"' || ch === '\\') out += '\\' + ch
      else if (ch === '\n') out += '\\n'
      else if (r < 0.1 && ch.length === 1) out += '\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0')
      else if (ch === '/' && r < 0.5) out += '\\/'
      else out += ch
    }
    return out + '"'
  }
  const randomString = (): string => {
    let s = ''
    const length = int(rng, 0, 8)
    for (let i = 0; i < length; i++) s += alphabet[int(rng, 0, alphabet.length - 1)]
    return s
  }
  const value = (depth: number): string => {
    const r = rng()
    if (depth > 3 || r < 0.3) return str(randomString())
    if (r < 0.4) return String(int(rng, -1000, 1000) * (rng() < 0.5 ? 1 : 0.25))
    if (r < 0.45) return ['true', 'false', 'null', '1e3', '-0.5E-2'][int(rng, 0, 4)] as string
    if (r < 0.7) {
      const items = Array.from({ length: int(rng, 0, 4) }, () => ws() + value(depth + 1) + ws())
      return '[' + (items.length === 0 ? ws() : items.join(',')) + ']'
    }
    return object(depth + 1, ['usage', 'data', 'x', randomString()])
  }
  const object = (depth: number, keys: string[]): string => {
    const members = keys.filter(() => rng() < 0.8).map((key) => ws() + str(key) + ws() + ':' + ws() + value(depth) + ws())
    return '{' + (members.length === 0 ? ws() : members.join(',')) + '}'
  }
  const keys = ['created', 'data', 'usage', 'size', 'x', randomString()]
  for (let i = keys.length - 1; i > 0; i--) {
    const j = int(rng, 0, i)
    ;[keys[i], keys[j]] = [keys[j] as string, keys[i] as string]
  }
  return ws() + object(0, keys) + ws()
}

t.test('random JSON answers agree with JSON.parse under random splits', async (t) => {
  const rng = seededRandom(2024)
  let checked = 0
  let disagreements = 0
  for (let round = 0; round < 400; round++) {
    const body = Buffer.from(randomAnswer(rng))
    const expected = oracle(body)
    const usageBytes = JSON.stringify(expected.usage).length
    if (usageBytes * 4 > 64 * 1024) continue
    for (const chunks of [[body], fixedChunks(body, 1), randomChunks(body, rng, 12)]) {
      const result = tapChunks('json', chunks)
      checked++
      if (JSON.stringify(result) !== JSON.stringify(expected)) {
        disagreements++
        if (disagreements <= 3) t.strictSame(result, expected, body.toString())
      }
    }
  }
  t.ok(checked > 1000, `${checked} checks`)
  t.equal(disagreements, 0)
})

const completedUsage = { total_tokens: 100, input_tokens: 50, output_tokens: 50, input_tokens_details: { text_tokens: 10, image_tokens: 40 } }

function sseEvent(name: string | null, data: Record<string, unknown>, eol = '\n'): string {
  return (name === null ? '' : `event: ${name}${eol}`) + `data: ${JSON.stringify(data)}${eol}${eol}`
}

function partial(index: number, image: string, type = 'image_generation.partial_image'): Record<string, unknown> {
  return { type, b64_json: image, created_at: 1620000000, size: '1024x1024', quality: 'high', background: 'transparent', output_format: 'png', partial_image_index: index }
}

function completed(image: string, usage: unknown = completedUsage, type = 'image_generation.completed'): Record<string, unknown> {
  return { type, b64_json: image, created_at: 1620000000, size: '1024x1024', quality: 'high', background: 'transparent', output_format: 'png', usage }
}

t.test('SSE: 2 partials and 1 completed', async (t) => {
  const stream =
    sseEvent('image_generation.partial_image', partial(0, b64(3000, 1))) +
    sseEvent('image_generation.partial_image', partial(1, b64(3000, 2))) +
    sseEvent('image_generation.completed', completed(b64(4000, 3)))
  const expected = { imagesReturned: 1, usage: completedUsage, partialImages: 2 }
  checkAllSplits(t, 'event-stream', Buffer.from(stream), expected, { seeds: 16 })

  const crlf =
    sseEvent('image_edit.partial_image', partial(0, b64(500, 1), 'image_edit.partial_image'), '\r\n') +
    sseEvent('image_edit.partial_image', partial(1, b64(500, 2), 'image_edit.partial_image'), '\r\n') +
    sseEvent('image_edit.completed', completed(b64(500, 3), completedUsage, 'image_edit.completed'), '\r\n')
  checkAllSplits(t, 'event-stream', Buffer.from(crlf), expected)
  // Without a `type` in the data only the event line names the event, so a CRLF read as two line ends (a blank line) would lose it.
  const untyped = `event: image_generation.completed\r\ndata: ${JSON.stringify({ b64_json: 'AAAA', usage: completedUsage })}\r\n\r\n`
  checkAllSplits(t, 'event-stream', Buffer.from(untyped), { imagesReturned: 1, usage: completedUsage, partialImages: 0 })
  const cr = crlf.replaceAll('\r\n', '\r')
  checkAllSplits(t, 'event-stream', Buffer.from(cr), expected, { everyTwoWay: false })
})

t.test('SSE: comments, multi-line data, events without an event line, [DONE]', async (t) => {
  const done = JSON.stringify(completed('QUJD'))
  const cut = done.indexOf('"usage"')
  const stream = [
    ': keep-alive',
    '',
    ':another comment with data: in it',
    'data: ' + JSON.stringify(partial(0, 'AAAA')),
    '',
    'id: 7',
    'retry: 1000',
    'data:' + JSON.stringify(partial(1, 'BBBB')),
    ': a comment inside an event',
    '',
    'event: image_generation.completed',
    'data: ' + done.slice(0, cut),
    'data: ' + done.slice(cut),
    '',
    'data: [DONE]',
    '',
    ''
  ].join('\n')
  checkAllSplits(t, 'event-stream', Buffer.from(stream), { imagesReturned: 1, usage: completedUsage, partialImages: 2 })

  // data lines are joined with a newline, as the SDK does: a number split across two lines is no longer one number.
  const splitNumber = 'event: image_generation.completed\ndata: {"usage":{"total_tokens":1\ndata: 00}}\n\n'
  checkAllSplits(t, 'event-stream', Buffer.from(splitNumber), { imagesReturned: 1, usage: null, partialImages: 0 })
  const splitWhitespace = 'event: image_generation.completed\ndata: {"usage":{"total_tokens":1,\ndata:"input_tokens":2}}\n\n'
  checkAllSplits(t, 'event-stream', Buffer.from(splitWhitespace), { imagesReturned: 1, usage: { total_tokens: 1, input_tokens: 2 }, partialImages: 0 })

  const noEventLines = sseEvent(null, partial(0, 'AAAA')) + sseEvent(null, completed('BBBB'))
  checkAllSplits(t, 'event-stream', Buffer.from(noEventLines), { imagesReturned: 1, usage: completedUsage, partialImages: 1 })

  const nameWins = sseEvent('image_generation.partial_image', completed('AAAA'))
  t.strictSame(tapWhole('event-stream', nameWins), { imagesReturned: null, usage: null, partialImages: 1 }, 'the event line decides over data.type')

  const unterminated = sseEvent('image_generation.completed', completed('AAAA')).trimEnd()
  t.strictSame(tapWhole('event-stream', unterminated), { imagesReturned: null, usage: null, partialImages: 0 }, 'an event is only dispatched at its blank line')
})

t.test('SSE: n=2 completed events have their usage summed', async (t) => {
  const withDetails = { ...completedUsage, output_tokens_details: { image_tokens: 45, text_tokens: 5 } }
  const stream =
    sseEvent('image_generation.partial_image', partial(0, 'AAAA')) +
    sseEvent('image_generation.completed', completed(b64(800, 1))) +
    sseEvent('image_generation.partial_image', partial(0, 'BBBB')) +
    sseEvent('image_generation.completed', completed(b64(800, 2), withDetails))
  checkAllSplits(t, 'event-stream', Buffer.from(stream), {
    imagesReturned: 2,
    usage: {
      total_tokens: 200,
      input_tokens: 100,
      output_tokens: 100,
      input_tokens_details: { text_tokens: 20, image_tokens: 80 },
      output_tokens_details: { image_tokens: 45, text_tokens: 5 }
    },
    partialImages: 2
  })

  const oneWithoutUsage = sseEvent('image_generation.completed', completed('AAAA', null)) + sseEvent('image_generation.completed', completed('BBBB'))
  t.strictSame(tapWhole('event-stream', oneWithoutUsage), { imagesReturned: 2, usage: completedUsage, partialImages: 0 })
})

t.test('SSE: an error event counts nothing', async (t) => {
  const error = { type: 'error', error: { message: 'upstream failed', type: 'server_error', param: null, code: null } }
  const stream = sseEvent('image_generation.partial_image', partial(0, 'AAAA')) + sseEvent('error', error)
  checkAllSplits(t, 'event-stream', Buffer.from(stream), { imagesReturned: null, usage: null, partialImages: 1 })
  t.strictSame(tapWhole('event-stream', sseEvent(null, error)), { imagesReturned: null, usage: null, partialImages: 0 }, 'type error, no event line')
  t.strictSame(tapWhole('event-stream', ''), { imagesReturned: null, usage: null, partialImages: 0 }, 'empty stream')
})

t.test('SSE: multi-MB partial images in 64 KiB chunks', async (t) => {
  const image = b64(3 * 1024 * 1024, 5)
  const stream = Buffer.from(
    sseEvent('image_generation.partial_image', partial(0, image)) +
      sseEvent('image_generation.partial_image', partial(1, image)) +
      sseEvent('image_generation.completed', completed(image))
  )
  const expected = { imagesReturned: 1, usage: completedUsage, partialImages: 2 }
  t.strictSame(tapChunks('event-stream', fixedChunks(stream, 64 * 1024)), expected)
  t.strictSame(tapChunks('event-stream', randomChunks(stream, seededRandom(3), 100 * 1024)), expected)
})

t.test('100 MB of string content streams through without being held', async (t) => {
  // One 1 MiB buffer pushed 100 times: if the tap kept (or concatenated) what it saw, this would need 100 MB+.
  const mebibyte = Buffer.from(b64(1024 * 1024, 11))
  const json = new UsageTap('json')
  json.push(Buffer.from('{\n  "created": 1,\n  "data": [\n    {\n      "b64_json": "'))
  for (let i = 0; i < 100; i++) json.push(mebibyte)
  json.push(Buffer.from(`"\n    }\n  ],\n  "usage": ${JSON.stringify(gptUsage, null, 2)}\n}\n`))
  t.strictSame(json.result(), { imagesReturned: 1, usage: gptUsage, partialImages: 0 })

  const events = new UsageTap('event-stream')
  for (const index of [0, 1]) {
    events.push(Buffer.from(`event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","partial_image_index":${index},"b64_json":"`))
    for (let i = 0; i < 50; i++) events.push(mebibyte)
    events.push(Buffer.from('"}\n\n'))
  }
  events.push(Buffer.from(sseEvent('image_generation.completed', completed('AAAA'))))
  t.strictSame(events.result(), { imagesReturned: 1, usage: completedUsage, partialImages: 2 })
})
