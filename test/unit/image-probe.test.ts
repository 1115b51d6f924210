import t, { type Test } from 'tap'
import { ImageProbe, type ImageProbeResult } from '../../src/multipart/image-probe.js'
import { makeJpeg, makePng, makeWebp, readPngSize } from '../helpers/images.js'
import { seededRandom } from '../helpers/random.js'

const maxScanBytes = 1024 * 1024
const kib = 1024


/** Bitwise CRC-32 for hand-built PNG chunks. */
function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff
  for (const byte of bytes) {
    crc ^= byte
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1
  }
  return (crc ^ 0xffffffff) >>> 0
}

function pngChunk(type: string, data: Buffer): Buffer {
  const chunk = Buffer.alloc(12 + data.length)
  chunk.writeUInt32BE(data.length, 0)
  chunk.write(type, 4, 4, 'latin1')
  data.copy(chunk, 8)
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length)
  return chunk
}

/** Splits a PNG from makePng into [signature, IHDR chunk, the remaining chunks]. */
function splitAfterIhdr(png: Buffer): [Buffer, Buffer, Buffer] {
  return [png.subarray(0, 8), png.subarray(8, 33), png.subarray(33)]
}

function ihdrData(width: number, height: number, colourType: number): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr.writeUInt8(8, 8)
  ihdr.writeUInt8(colourType, 9)
  return ihdr
}

/** A PNG built chunk by chunk: signature, IHDR, the given chunks, then IDAT (from makePng) and IEND. */
function handPng(colourType: number, middle: Buffer[], after: Buffer[] = []): Buffer {
  const [signature, , rest] = splitAfterIhdr(makePng({ width: 3, height: 2 }))
  return Buffer.concat([signature, pngChunk('IHDR', ihdrData(3, 2, colourType)), ...middle, rest.subarray(0, rest.length - 12), ...after, rest.subarray(rest.length - 12)])
}

function jpegSegment(marker: number, payload: Buffer): Buffer {
  const header = Buffer.from([0xff, marker, 0, 0])
  header.writeUInt16BE(payload.length + 2, 2)
  return Buffer.concat([header, payload])
}

/** Offset of the first `FF marker` pair in a JPEG from makeJpeg. */
function markerOffset(jpeg: Buffer, marker: number): number {
  const offset = jpeg.indexOf(Buffer.from([0xff, marker]))
  if (offset < 0) throw new Error(`marker ${marker.toString(16)} not found`)
  return offset
}

function insertAt(bytes: Buffer, offset: number, inserted: Buffer): Buffer {
  return Buffer.concat([bytes.subarray(0, offset), inserted, bytes.subarray(offset)])
}

function probeChunks(chunks: Iterable<Buffer>): { result: ImageProbeResult; done: boolean } {
  const probe = new ImageProbe()
  for (const chunk of chunks) probe.push(chunk)
  return { result: probe.result(), done: probe.done }
}

function* fixedChunks(bytes: Buffer, chunkBytes: number): Generator<Buffer> {
  for (let offset = 0; offset < bytes.length; offset += chunkBytes) yield bytes.subarray(offset, offset + chunkBytes)
}

function* randomChunks(bytes: Buffer, seed: number, maxChunkBytes: number): Generator<Buffer> {
  const random = seededRandom(seed)
  let offset = 0
  while (offset < bytes.length) {
    const chunkBytes = 1 + Math.floor(random() * maxChunkBytes)
    yield bytes.subarray(offset, offset + chunkBytes)
    offset += chunkBytes
  }
}

/** Every byte goes through one reused buffer, so a probe that kept references to its input would read garbage. */
function* reusedBufferChunks(bytes: Buffer): Generator<Buffer> {
  const shared = Buffer.alloc(1)
  for (const byte of bytes) {
    shared[0] = byte
    yield shared
  }
  shared[0] = 0
}

/** Feeds `bytes` whole, byte by byte, through a reused buffer, at every two-way split and in seeded random chunks; all must agree. */
function checkAllSplits(t: Test, bytes: Buffer, expected: ImageProbeResult, expectDone = true): void {
  const whole = probeChunks([bytes])
  t.strictSame(whole.result, expected, 'whole file')
  t.equal(whole.done, expectDone, 'done after the whole file')
  const variants: Array<[string, Iterable<Buffer>]> = [
    ['1-byte chunks', fixedChunks(bytes, 1)],
    ['reused 1-byte buffer', reusedBufferChunks(bytes)],
    ['7-byte chunks', fixedChunks(bytes, 7)]
  ]
  for (const seed of [1, 2, 3, 42]) variants.push([`random chunks seed ${seed}`, randomChunks(bytes, seed, 1 + (seed * 13) % 40)])
  for (const [name, chunks] of variants) {
    const fed = probeChunks(chunks)
    t.strictSame(fed.result, expected, name)
    t.equal(fed.done, expectDone, `${name}: done`)
  }
  const splitLimit = Math.min(bytes.length, 400)
  let splitMismatches = 0
  for (let at = 0; at <= splitLimit; at++) {
    const fed = probeChunks([bytes.subarray(0, at), bytes.subarray(at)])
    if (JSON.stringify(fed.result) !== JSON.stringify(expected) || fed.done !== expectDone) splitMismatches++
  }
  t.equal(splitMismatches, 0, `every two-way split up to byte ${splitLimit}`)
}

const png = (width: number, height: number, hasAlpha: boolean): ImageProbeResult => ({ format: 'png', width, height, hasAlpha })
const jpeg = (width: number | null, height: number | null): ImageProbeResult => ({ format: 'jpeg', width, height, hasAlpha: null })
const webp = (width: number | null, height: number | null): ImageProbeResult => ({ format: 'webp', width, height, hasAlpha: null })
const unknown: ImageProbeResult = { format: null, width: null, height: null, hasAlpha: null }

t.test('PNG dimensions and colour-type alpha, in every split', async (t) => {
  for (const [width, height] of [[1, 1], [7, 5], [300, 2], [2, 300], [70000, 1]] as const) {
    for (const alpha of [false, true]) {
      await t.test(`${width}x${height} alpha=${alpha}`, async (t) => {
        checkAllSplits(t, makePng({ width, height, alpha, seed: width + height }), png(width, height, alpha))
      })
    }
  }
})

t.test('PNG alpha via tRNS and other colour types', async (t) => {
  const trnsRgb = pngChunk('tRNS', Buffer.from([0, 1, 0, 2, 0, 3]))
  const text = pngChunk('tEXt', Buffer.from('Comment\0hello', 'latin1'))

  await t.test('RGB with tRNS before IDAT', async (t) => {
    checkAllSplits(t, handPng(2, [trnsRgb]), png(3, 2, true))
  })
  await t.test('tRNS after other ancillary chunks', async (t) => {
    checkAllSplits(t, handPng(2, [text, pngChunk('gAMA', Buffer.from([0, 0, 0xb1, 0x8f])), trnsRgb]), png(3, 2, true))
  })
  await t.test('tRNS after a 200 KB ancillary chunk', async (t) => {
    const bigText = pngChunk('zzZz', Buffer.alloc(200 * kib, 0x61))
    checkAllSplits(t, handPng(2, [bigText, trnsRgb]), png(3, 2, true))
  })
  await t.test('palette with PLTE + tRNS', async (t) => {
    const plte = pngChunk('PLTE', Buffer.from([0, 0, 0, 255, 255, 255]))
    checkAllSplits(t, handPng(3, [plte, pngChunk('tRNS', Buffer.from([0]))]), png(3, 2, true))
  })
  await t.test('palette without tRNS', async (t) => {
    checkAllSplits(t, handPng(3, [pngChunk('PLTE', Buffer.from([0, 0, 0]))]), png(3, 2, false))
  })
  await t.test('greyscale without tRNS, ancillary chunks only', async (t) => {
    checkAllSplits(t, handPng(0, [text]), png(3, 2, false))
  })
  await t.test('greyscale+alpha (colour type 4)', async (t) => {
    checkAllSplits(t, handPng(4, []), png(3, 2, true))
  })
  await t.test('a tRNS after IDAT does not count: the walk stops at the first IDAT', async (t) => {
    checkAllSplits(t, handPng(2, [], [trnsRgb]), png(3, 2, false))
  })
  await t.test('an invalid colour type leaves hasAlpha unknown', async (t) => {
    checkAllSplits(t, handPng(5, [trnsRgb]), { format: 'png', width: 3, height: 2, hasAlpha: null })
  })
  await t.test('IEND straight after IHDR settles hasAlpha false', async (t) => {
    const [signature, ihdr] = splitAfterIhdr(makePng({ width: 3, height: 2 }))
    checkAllSplits(t, Buffer.concat([signature, ihdr, pngChunk('IEND', Buffer.alloc(0))]), png(3, 2, false))
  })
})

t.test('PNG: a first chunk other than IHDR gives up with unknown size', async (t) => {
  const [signature, , rest] = splitAfterIhdr(makePng({ width: 3, height: 2 }))
  const { result, done } = probeChunks([Buffer.concat([signature, rest])])
  t.ok(done)
  t.strictSame(result, { format: 'png', width: null, height: null, hasAlpha: null })
  const shortIhdr = Buffer.concat([signature, pngChunk('IHDR', Buffer.alloc(12)), rest])
  t.strictSame(probeChunks([shortIhdr]).result, { format: 'png', width: null, height: null, hasAlpha: null })
})

t.test('PNG: gives up on hasAlpha after 1 MiB of ancillary chunks', async (t) => {
  const [signature, ihdr, rest] = splitAfterIhdr(makePng({ width: 3, height: 2 }))
  const trns = pngChunk('tRNS', Buffer.from([0, 1, 0, 2, 0, 3]))
  const file = Buffer.concat([signature, ihdr, pngChunk('zzZz', Buffer.alloc(2 * maxScanBytes)), trns, rest])
  const expected = { format: 'png', width: 3, height: 2, hasAlpha: null }

  const probe = new ImageProbe()
  probe.push(file.subarray(0, maxScanBytes - 1))
  t.notOk(probe.done, 'still walking one byte before the limit')
  t.strictSame(probe.result(), expected, 'dims known, alpha not yet')
  probe.push(file.subarray(maxScanBytes - 1, maxScanBytes))
  t.ok(probe.done, 'done exactly at the limit')
  probe.push(file.subarray(maxScanBytes))
  t.strictSame(probe.result(), expected, 'the tRNS beyond the limit is never seen')

  t.strictSame(probeChunks([file]).result, expected, 'one big chunk')
  t.strictSame(probeChunks(fixedChunks(file, 64 * kib)).result, expected, '64 KiB chunks')

  const within = Buffer.concat([signature, ihdr, pngChunk('zzZz', Buffer.alloc(maxScanBytes - 200)), trns, rest])
  t.strictSame(probeChunks(fixedChunks(within, 64 * kib)), { result: png(3, 2, true), done: true }, 'tRNS just inside the limit is found')
})

t.test('30 MB padded PNG in 64 KiB chunks is done after the first chunk', async (t) => {
  for (const alpha of [false, true]) {
    const big = makePng({ width: 4, height: 3, alpha, padToBytes: 30 * 1000 * 1000, seed: 9 })
    t.equal(big.length, 30_000_000)
    const probe = new ImageProbe()
    const chunks = [...fixedChunks(big, 64 * kib)]
    probe.push(chunks[0] ?? Buffer.alloc(0))
    t.ok(probe.done, `done after the first chunk (alpha=${alpha})`)
    t.strictSame(probe.result(), png(4, 3, alpha))
    for (const chunk of chunks.slice(1)) probe.push(chunk)
    t.strictSame(probe.result(), png(4, 3, alpha), 'unchanged at end of file')
  }
})

t.test('JPEG dimensions from SOF0, in every split', async (t) => {
  for (const [width, height] of [[1, 1], [33, 17], [640, 480], [65535, 1], [1, 65535]] as const) {
    await t.test(`${width}x${height}`, async (t) => {
      checkAllSplits(t, makeJpeg({ width, height }), jpeg(width, height))
    })
  }
})

t.test('JPEG marker walking', async (t) => {
  const base = makeJpeg({ width: 123, height: 45 })
  const dqtAt = markerOffset(base, 0xdb)
  const sofAt = markerOffset(base, 0xc0)

  await t.test('75 KB of APP1 before SOF (a maximum-size segment plus another)', async (t) => {
    // A segment length is 16 bits, so 65,533 payload bytes is the most one APP1 can carry.
    const exif = jpegSegment(0xe1, Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), Buffer.alloc(0xffff - 2 - 6, 0xff)]))
    const xmp = jpegSegment(0xe1, Buffer.concat([Buffer.from('http://ns.adobe.com/xap/1.0/\0', 'latin1'), Buffer.alloc(10 * 1000, 0xd9)]))
    t.equal(exif.length, 0xffff + 2)
    checkAllSplits(t, insertAt(base, dqtAt, Buffer.concat([exif, xmp])), jpeg(123, 45))
  })
  await t.test('0xFF fill bytes before markers', async (t) => {
    const filled = insertAt(insertAt(base, sofAt, Buffer.alloc(5, 0xff)), dqtAt, Buffer.alloc(1, 0xff))
    checkAllSplits(t, filled, jpeg(123, 45))
  })
  await t.test('standalone TEM and RST markers between segments', async (t) => {
    checkAllSplits(t, insertAt(base, sofAt, Buffer.from([0xff, 0x01, 0xff, 0xd0, 0xff, 0xd7])), jpeg(123, 45))
  })
  await t.test('DHT, DAC and JPG segments before SOF are not frame headers', async (t) => {
    const dht = jpegSegment(0xc4, Buffer.concat([Buffer.from([0x00, 1]), Buffer.alloc(15), Buffer.from([0])]))
    const dac = jpegSegment(0xcc, Buffer.from([0x00, 0x10]))
    const jpg = jpegSegment(0xc8, Buffer.from([0x12, 0x34, 0x56, 0x78, 0x9a]))
    checkAllSplits(t, insertAt(base, sofAt, Buffer.concat([dht, dac, jpg])), jpeg(123, 45))
  })
  await t.test('an empty segment (length 2) before SOF', async (t) => {
    checkAllSplits(t, insertAt(base, sofAt, jpegSegment(0xfe, Buffer.alloc(0))), jpeg(123, 45))
  })
  for (const sofMarker of [0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]) {
    await t.test(`SOF marker 0x${sofMarker.toString(16)}`, async (t) => {
      const variant = Buffer.from(base)
      variant[sofAt + 1] = sofMarker
      checkAllSplits(t, variant, jpeg(123, 45))
    })
  }
  await t.test('SOS before any SOF: done, no dims', async (t) => {
    const noSof = Buffer.concat([base.subarray(0, sofAt), base.subarray(markerOffset(base, 0xc4))])
    checkAllSplits(t, noSof, jpeg(null, null))
  })
  await t.test('EOI before any SOF: done, no dims', async (t) => {
    checkAllSplits(t, Buffer.concat([base.subarray(0, sofAt), Buffer.from([0xff, 0xd9]), base.subarray(sofAt)]), jpeg(null, null))
  })
  await t.test('height 0 (defined later by DNL) is unknown', async (t) => {
    const dnl = Buffer.from(base)
    dnl.writeUInt16BE(0, sofAt + 5)
    checkAllSplits(t, dnl, jpeg(123, null))
  })
  await t.test('garbage between segments: done, no dims', async (t) => {
    checkAllSplits(t, insertAt(base, sofAt, Buffer.from([0x12])), jpeg(null, null))
    checkAllSplits(t, insertAt(base, sofAt, Buffer.from([0xff, 0x00])), jpeg(null, null))
  })
  await t.test('a segment length below 2: done, no dims', async (t) => {
    checkAllSplits(t, insertAt(base, sofAt, Buffer.from([0xff, 0xe2, 0x00, 0x01])), jpeg(null, null))
  })
  await t.test('a SOF too short to hold the dims: done, no dims', async (t) => {
    const short = Buffer.from(base)
    short.writeUInt16BE(6, sofAt + 2)
    checkAllSplits(t, short, jpeg(null, null))
  })
  await t.test('an SOI straight after the first marker', async (t) => {
    checkAllSplits(t, insertAt(base, 2, Buffer.from([0xff, 0xd8])), jpeg(123, 45))
  })
})

t.test('JPEG: gives up after 1 MiB without SOF', async (t) => {
  const base = makeJpeg({ width: 20, height: 10 })
  const sofAt = markerOffset(base, 0xc0)
  const app = jpegSegment(0xe2, Buffer.alloc(60 * 1000))
  const manyApps = Buffer.concat(Array.from({ length: 20 }, () => app))
  const late = insertAt(base, sofAt, manyApps)
  for (const [name, chunks] of [['one chunk', [late]], ['64 KiB chunks', fixedChunks(late, 64 * kib)], ['random chunks', randomChunks(late, 5, 9000)]] as const) {
    t.strictSame(probeChunks(chunks), { result: jpeg(null, null), done: true }, name)
  }
  const early = insertAt(base, sofAt, Buffer.concat(Array.from({ length: 17 }, () => app)))
  t.ok(early.indexOf(Buffer.from([0xff, 0xc0])) + 9 < maxScanBytes, 'SOF header ends inside the limit')
  t.strictSame(probeChunks(fixedChunks(early, 64 * kib)), { result: jpeg(20, 10), done: true }, 'SOF just inside the limit is found')
})

t.test('WebP dimensions for all three kinds, in every split', async (t) => {
  const sizes = [[1, 1], [40, 30], [16383, 16383], [1, 16383]] as const
  for (const kind of ['VP8', 'VP8L', 'VP8X'] as const) {
    for (const [width, height] of sizes) {
      await t.test(`${kind} ${width}x${height}`, async (t) => {
        checkAllSplits(t, makeWebp({ width, height, kind }), webp(width, height))
      })
    }
  }
  await t.test('VP8L and VP8X at 16384', async (t) => {
    checkAllSplits(t, makeWebp({ width: 16384, height: 16384, kind: 'VP8L' }), webp(16384, 16384))
    checkAllSplits(t, makeWebp({ width: 16384, height: 2, kind: 'VP8X' }), webp(16384, 2))
  })
  await t.test('default kind is VP8', async (t) => {
    t.equal(makeWebp({ width: 5, height: 6 }).toString('latin1', 12, 16), 'VP8 ')
  })
})

t.test('WebP header details', async (t) => {
  await t.test('VP8X canvas uses all 24 bits', async (t) => {
    const file = makeWebp({ width: 10, height: 10, kind: 'VP8X' })
    file.writeUIntLE(0xabcdef, 24, 3)
    file.writeUIntLE(0x123456, 27, 3)
    checkAllSplits(t, file, webp(0xabcdef + 1, 0x123456 + 1))
  })
  await t.test('VP8 scale bits are masked off', async (t) => {
    const file = makeWebp({ width: 300, height: 200, kind: 'VP8' })
    file.writeUInt16LE(300 | 0xc000, 26)
    file.writeUInt16LE(200 | 0x4000, 28)
    checkAllSplits(t, file, webp(300, 200))
  })
  await t.test('VP8 without the key-frame start code: no dims', async (t) => {
    const file = makeWebp({ width: 300, height: 200, kind: 'VP8' })
    file[24] = 0x02
    checkAllSplits(t, file, webp(null, null))
  })
  await t.test('VP8L without the 0x2F signature: no dims', async (t) => {
    const file = makeWebp({ width: 300, height: 200, kind: 'VP8L' })
    file[20] = 0x2e
    checkAllSplits(t, file, webp(null, null))
  })
  await t.test('an unknown first chunk: done, no dims', async (t) => {
    const file = makeWebp({ width: 300, height: 200, kind: 'VP8' })
    file.write('ALPH', 12, 4, 'latin1')
    checkAllSplits(t, file, webp(null, null))
    const probe = new ImageProbe()
    probe.push(file.subarray(0, 16))
    t.ok(probe.done, 'done as soon as the FourCC is known')
  })
  await t.test('a VP8L header is complete after 25 bytes', async (t) => {
    checkAllSplits(t, makeWebp({ width: 77, height: 88, kind: 'VP8L' }).subarray(0, 25), webp(77, 88))
  })
})

t.test('unknown formats', async (t) => {
  const samples: Array<[string, Buffer, number]> = [
    ['GIF87a', Buffer.from('GIF87a\x01\x00\x01\x00\x00\x00\x00;', 'latin1'), 1],
    ['GIF89a', Buffer.from('GIF89a\x01\x00\x01\x00\x00\x00\x00;', 'latin1'), 1],
    ['plain text', Buffer.from('hello, this is not an image at all\n'), 1],
    ['BMP', Buffer.concat([Buffer.from('BM', 'latin1'), Buffer.alloc(60)]), 1],
    ['RIFF WAVE', Buffer.concat([Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1'), Buffer.alloc(30)]), 10],
    ['RIFF with a near-miss form type', Buffer.concat([Buffer.from('RIFF\x24\x00\x00\x00WEBXVP8 ', 'latin1'), Buffer.alloc(30)]), 12],
    ['PNG signature with one wrong byte', Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x00]), Buffer.alloc(40)]), 8],
    ['JPEG SOI without a following marker', Buffer.from([0xff, 0xd8, 0x00, 0x01, 0x02]), 3]
  ]
  for (const [name, bytes, decidedAfterBytes] of samples) {
    await t.test(name, async (t) => {
      checkAllSplits(t, bytes, unknown)
      const probe = new ImageProbe()
      probe.push(bytes.subarray(0, decidedAfterBytes - 1))
      t.notOk(probe.done, `not decided after ${decidedAfterBytes - 1} bytes`)
      probe.push(bytes.subarray(decidedAfterBytes - 1, decidedAfterBytes))
      t.ok(probe.done, `decided after ${decidedAfterBytes} bytes`)
    })
  }
  await t.test('no bytes or only empty chunks', async (t) => {
    t.strictSame(probeChunks([]), { result: unknown, done: false })
    t.strictSame(probeChunks([Buffer.alloc(0), Buffer.alloc(0)]), { result: unknown, done: false })
  })
  await t.test('shorter than the signature: format unknown, not done', async (t) => {
    t.strictSame(probeChunks([Buffer.from([0x89, 0x50, 0x4e])]), { result: unknown, done: false })
    t.strictSame(probeChunks([Buffer.from([0xff, 0xd8])]), { result: unknown, done: false })
    t.strictSame(probeChunks([Buffer.from('RIFF\0\0\0\0WEB', 'latin1')]), { result: unknown, done: false })
  })
})

t.test('truncated files never throw and only report what is certain', async (t) => {
  const files: Array<[string, Buffer]> = [
    ['png', makePng({ width: 9, height: 4 })],
    ['png alpha', makePng({ width: 9, height: 4, alpha: true })],
    ['png tRNS', handPng(2, [pngChunk('tRNS', Buffer.from([0, 1, 0, 2, 0, 3]))])],
    ['jpeg', makeJpeg({ width: 99, height: 77 })],
    ['webp VP8', makeWebp({ width: 99, height: 77, kind: 'VP8' })],
    ['webp VP8L', makeWebp({ width: 99, height: 77, kind: 'VP8L' })],
    ['webp VP8X', makeWebp({ width: 99, height: 77, kind: 'VP8X' })]
  ]
  for (const [name, file] of files) {
    const full = probeChunks([file]).result
    let problems = 0
    for (let length = 0; length <= file.length; length++) {
      for (const chunks of [[file.subarray(0, length)], fixedChunks(file.subarray(0, length), 1)]) {
        try {
          const { result } = probeChunks(chunks)
          const consistent = (Object.keys(full) as Array<keyof ImageProbeResult>).every((key) => result[key] === null || result[key] === full[key])
          if (!consistent) problems++
        } catch {
          problems++
        }
      }
    }
    t.equal(problems, 0, `${name}: every prefix of ${file.length} bytes`)
  }
})

t.test('random bytes after each signature never throw', async (t) => {
  const random = seededRandom(2024)
  const signatures = [
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]),
    Buffer.from([0xff, 0xd8, 0xff]),
    Buffer.from('RIFF\0\0\0\0WEBPVP8 ', 'latin1'),
    Buffer.from('RIFF\0\0\0\0WEBPVP8L', 'latin1'),
    Buffer.from('RIFF\0\0\0\0WEBPVP8X', 'latin1')
  ]
  let thrown = 0
  for (const signature of signatures) {
    for (let round = 0; round < 300; round++) {
      const tail = Buffer.alloc(Math.floor(random() * 200))
      for (let i = 0; i < tail.length; i++) tail[i] = Math.floor(random() * 256)
      try {
        probeChunks(randomChunks(Buffer.concat([signature, tail]), round, 16))
      } catch {
        thrown++
      }
    }
  }
  t.equal(thrown, 0)
})

t.test('once done, further input is ignored', async (t) => {
  const probe = new ImageProbe()
  probe.push(makeJpeg({ width: 8, height: 8 }))
  t.ok(probe.done)
  probe.push(makePng({ width: 1, height: 1 }))
  probe.push(Buffer.alloc(10 * maxScanBytes, 0xff))
  t.strictSame(probe.result(), jpeg(8, 8))
})

t.test('readPngSize round trip', async (t) => {
  for (const [width, height] of [[1, 1], [7, 5], [70000, 1], [1, 3000]] as const) {
    for (const alpha of [false, true]) {
      t.strictSame(readPngSize(makePng({ width, height, alpha })), { width, height }, `${width}x${height} alpha=${alpha}`)
    }
  }
  t.strictSame(readPngSize(makePng({ width: 3, height: 2, padToBytes: 5000 })), { width: 3, height: 2 }, 'padded')
  t.throws(() => readPngSize(makeJpeg({ width: 3, height: 2 })), 'a JPEG is not a PNG')
  t.throws(() => readPngSize(makePng({ width: 3, height: 2 }).subarray(0, 20)), 'truncated')
})
