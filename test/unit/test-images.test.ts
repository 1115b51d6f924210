import { inflateSync } from 'node:zlib'
import t from 'tap'
import { makeJpeg, makePng, makeWebp, readPngSize } from '../helpers/images.js'

/** Bit-at-a-time CRC-32 (no table), deliberately unlike the builder's, so the two cannot share a bug. */
function referenceCrc32(bytes: Uint8Array): number {
  let crc = 0xffffffff
  for (const byte of bytes) {
    crc ^= byte
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1
  }
  return (crc ^ 0xffffffff) >>> 0
}

interface PngChunk {
  type: string
  data: Buffer
  crcOk: boolean
}

/** Walks a PNG chunk by chunk; throws unless the chunks tile the file exactly. */
function walkPng(png: Buffer, checkCrc = true): PngChunk[] {
  if (!png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) throw new Error('bad signature')
  const chunks: PngChunk[] = []
  let offset = 8
  while (offset < png.length) {
    if (offset + 12 > png.length) throw new Error(`chunk header overruns the file at ${offset}`)
    const dataBytes = png.readUInt32BE(offset)
    const dataEnd = offset + 8 + dataBytes
    if (dataEnd + 4 > png.length) throw new Error(`chunk data overruns the file at ${offset}`)
    const crcOk = !checkCrc || referenceCrc32(png.subarray(offset + 4, dataEnd)) === png.readUInt32BE(dataEnd)
    chunks.push({ type: png.toString('latin1', offset + 4, offset + 8), data: png.subarray(offset + 8, dataEnd), crcOk })
    offset = dataEnd + 4
  }
  return chunks
}

function chunkOf(chunks: PngChunk[], type: string): Buffer {
  const found = chunks.find((chunk) => chunk.type === type)
  if (found === undefined) throw new Error(`no ${type} chunk`)
  return found.data
}

t.test('the reference CRC-32 matches the standard check value', async (t) => {
  t.equal(referenceCrc32(Buffer.from('123456789', 'latin1')), 0xcbf43926)
  t.equal(referenceCrc32(Buffer.from('IEND', 'latin1')), 0xae426082, 'the fixed CRC every IEND chunk carries')
})

t.test('makePng: chunk layout, CRCs, IHDR fields and IDAT size', async (t) => {
  const cases = [
    { width: 1, height: 1 },
    { width: 7, height: 5, seed: 3 },
    { width: 7, height: 5, alpha: true },
    { width: 64, height: 33, alpha: true, seed: 77 },
    { width: 300, height: 2 },
    { width: 5, height: 4, padToBytes: 4096 },
    { width: 5, height: 4, alpha: true, padToBytes: 2 * 1024 * 1024, seed: 1 }
  ]
  for (const opts of cases) {
    await t.test(JSON.stringify(opts), async (t) => {
      const png = makePng(opts)
      const chunks = walkPng(png)
      const expectedTypes = opts.padToBytes === undefined ? ['IHDR', 'IDAT', 'IEND'] : ['IHDR', 'IDAT', 'prVt', 'IEND']
      t.strictSame(chunks.map((chunk) => chunk.type), expectedTypes, 'chunk order')
      t.strictSame(chunks.filter((chunk) => !chunk.crcOk).map((chunk) => chunk.type), [], 'every CRC is correct')

      const ihdr = chunkOf(chunks, 'IHDR')
      t.equal(ihdr.length, 13)
      t.strictSame(
        { width: ihdr.readUInt32BE(0), height: ihdr.readUInt32BE(4), bitDepth: ihdr[8], colourType: ihdr[9], compression: ihdr[10], filter: ihdr[11], interlace: ihdr[12] },
        { width: opts.width, height: opts.height, bitDepth: 8, colourType: opts.alpha === true ? 6 : 2, compression: 0, filter: 0, interlace: 0 }
      )

      const channels = opts.alpha === true ? 4 : 3
      const rowBytes = 1 + opts.width * channels
      const scanlines = inflateSync(chunkOf(chunks, 'IDAT'))
      t.equal(scanlines.length, opts.height * rowBytes, 'height × (1 + width × channels) bytes')
      let nonZeroFilters = 0
      for (let row = 0; row < opts.height; row++) if (scanlines[row * rowBytes] !== 0) nonZeroFilters++
      t.equal(nonZeroFilters, 0, 'every scanline uses filter type 0')
      t.equal(chunkOf(chunks, 'IEND').length, 0)
      if (opts.padToBytes !== undefined) t.equal(png.length, opts.padToBytes, 'padded to the exact size')
    })
  }
})

t.test('makePng: the seed decides the pixels, deterministically', async (t) => {
  const pixels = (seed: number): Buffer => inflateSync(chunkOf(walkPng(makePng({ width: 16, height: 16, seed })), 'IDAT'))
  t.ok(makePng({ width: 16, height: 16, seed: 5 }).equals(makePng({ width: 16, height: 16, seed: 5 })), 'same seed, same bytes')
  t.notOk(pixels(1).equals(pixels(2)), 'different seeds, different pixels')
  t.notOk(pixels(0).equals(pixels(1)), 'seed 0 differs from seed 1')
  t.ok(makePng({ width: 16, height: 16 }).equals(makePng({ width: 16, height: 16, seed: 0 })), 'the default seed is 0')
  const varied = new Set(pixels(9))
  t.ok(varied.size > 100, 'pixel values are spread out, not constant')
})

t.test('makePng: padToBytes', async (t) => {
  const unpadded = makePng({ width: 5, height: 4, seed: 2 }).length
  const smallest = unpadded + 12
  t.equal(makePng({ width: 5, height: 4, seed: 2, padToBytes: smallest }).length, smallest, 'an empty padding chunk')
  t.strictSame(walkPng(makePng({ width: 5, height: 4, seed: 2, padToBytes: smallest })).map((chunk) => chunk.data.length), [13, unpadded - 57, 0, 0])
  for (const padToBytes of [smallest + 1, 1000, 1001, 65536, 1_000_003]) {
    t.equal(makePng({ width: 5, height: 4, seed: 2, padToBytes }).length, padToBytes, `${padToBytes} bytes`)
  }
  t.throws(() => makePng({ width: 5, height: 4, seed: 2, padToBytes: smallest - 1 }), RangeError, 'one byte short of a padding chunk')
  t.throws(() => makePng({ width: 5, height: 4, seed: 2, padToBytes: unpadded }), RangeError, 'the unpadded size leaves no room for a chunk')
  t.throws(() => makePng({ width: 5, height: 4, padToBytes: 10 }), RangeError)
  t.throws(() => makePng({ width: 5, height: 4, padToBytes: 5000.5 }), RangeError, 'not an integer')

  const big = makePng({ width: 4, height: 4, alpha: true, padToBytes: 60 * 1000 * 1000 })
  t.equal(big.length, 60_000_000, '60 MB exactly')
  const bigChunks = walkPng(big, false)
  t.strictSame(bigChunks.map((chunk) => chunk.type), ['IHDR', 'IDAT', 'prVt', 'IEND'], 'the chunks tile 60 MB exactly')
  t.strictSame(readPngSize(big), { width: 4, height: 4 })
})

t.test('makePng: rejects impossible sizes', async (t) => {
  t.throws(() => makePng({ width: 0, height: 1 }), RangeError)
  t.throws(() => makePng({ width: 1, height: -1 }), RangeError)
  t.throws(() => makePng({ width: 1.5, height: 1 }), RangeError)
})

t.test('makeJpeg: segment structure', async (t) => {
  for (const [width, height] of [[1, 1], [8, 8], [9, 17], [640, 480], [65535, 3]] as const) {
    await t.test(`${width}x${height}`, async (t) => {
      const jpeg = makeJpeg({ width, height })
      t.strictSame([...jpeg.subarray(0, 2)], [0xff, 0xd8], 'SOI')
      const markers: number[] = []
      let offset = 2
      let sof: Buffer | undefined
      while (jpeg[offset] === 0xff && jpeg[offset + 1] !== 0xda) {
        const marker = jpeg.readUInt8(offset + 1)
        const segmentBytes = jpeg.readUInt16BE(offset + 2)
        markers.push(marker)
        if (marker === 0xc0) sof = jpeg.subarray(offset + 4, offset + 2 + segmentBytes)
        if (marker === 0xe0) t.equal(jpeg.toString('latin1', offset + 4, offset + 9), 'JFIF\0', 'APP0 is JFIF')
        offset += 2 + segmentBytes
      }
      markers.push(jpeg.readUInt8(offset + 1))
      t.strictSame(markers, [0xe0, 0xdb, 0xc0, 0xc4, 0xda], 'APP0, DQT, SOF0, DHT, SOS')
      t.ok(sof !== undefined, 'has SOF0')
      if (sof !== undefined) {
        t.strictSame({ precision: sof[0], height: sof.readUInt16BE(1), width: sof.readUInt16BE(3), components: sof[5] }, { precision: 8, height, width, components: 1 })
        t.equal(sof.length, 6 + 3 * 1, 'frame header length matches the component count')
      }
      const scanStart = offset + 2 + jpeg.readUInt16BE(offset + 2)
      const scan = jpeg.subarray(scanStart, jpeg.length - 2)
      t.ok(scan.length > 0, 'some entropy-coded bytes')
      t.equal(scan.indexOf(0xff), -1, 'no unstuffed 0xFF in the scan')
      t.equal(scan.length, Math.ceil((2 * Math.ceil(width / 8) * Math.ceil(height / 8)) / 8), '2 bits per 8×8 block')
      t.strictSame([...jpeg.subarray(jpeg.length - 2)], [0xff, 0xd9], 'EOI at the end')
    })
  }
  t.throws(() => makeJpeg({ width: 65536, height: 1 }), RangeError)
  t.throws(() => makeJpeg({ width: 1, height: 0 }), RangeError)
})

t.test('makeWebp: RIFF container and header fields', async (t) => {
  for (const kind of ['VP8', 'VP8L', 'VP8X'] as const) {
    for (const [width, height] of [[1, 1], [40, 30], [16383, 2]] as const) {
      await t.test(`${kind} ${width}x${height}`, async (t) => {
        const webp = makeWebp({ width, height, kind })
        t.equal(webp.toString('latin1', 0, 4), 'RIFF')
        t.equal(webp.readUInt32LE(4), webp.length - 8, 'RIFF size counts everything after itself')
        t.equal(webp.toString('latin1', 8, 12), 'WEBP')
        const chunks: Array<{ fourcc: string; payload: Buffer }> = []
        let offset = 12
        while (offset + 8 <= webp.length) {
          const payloadBytes = webp.readUInt32LE(offset + 4)
          chunks.push({ fourcc: webp.toString('latin1', offset, offset + 4), payload: webp.subarray(offset + 8, offset + 8 + payloadBytes) })
          offset += 8 + payloadBytes + (payloadBytes % 2)
        }
        t.equal(offset, webp.length, 'chunks (with pad bytes) tile the file exactly')

        const image = chunks.at(-1)
        const expectedFourccs = { VP8: ['VP8 '], VP8L: ['VP8L'], VP8X: ['VP8X', 'VP8L'] }[kind]
        t.strictSame(chunks.map((chunk) => chunk.fourcc), expectedFourccs)
        if (image === undefined) return
        if (image.fourcc === 'VP8 ') {
          const frameTag = image.payload.readUIntLE(0, 3)
          t.equal(frameTag & 1, 0, 'key frame')
          t.equal((frameTag >>> 4) & 1, 1, 'shown')
          t.equal(frameTag >>> 5, image.payload.length - 10, 'first partition size covers the rest')
          t.equal(image.payload.readUIntBE(3, 3), 0x9d012a, 'start code')
          t.strictSame({ width: image.payload.readUInt16LE(6), height: image.payload.readUInt16LE(8) }, { width, height })
        } else {
          t.equal(image.payload[0], 0x2f, 'VP8L signature')
          const bits = image.payload.readUInt32LE(1)
          t.strictSame({ width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1, version: bits >>> 29 }, { width, height, version: 0 })
        }
        const vp8x = chunks.find((chunk) => chunk.fourcc === 'VP8X')
        if (vp8x !== undefined) {
          t.equal(vp8x.payload.length, 10)
          t.equal(vp8x.payload[0], 0, 'no feature flags')
          t.strictSame({ width: vp8x.payload.readUIntLE(4, 3) + 1, height: vp8x.payload.readUIntLE(7, 3) + 1 }, { width, height }, 'canvas matches the frame')
        }
      })
    }
  }
  t.throws(() => makeWebp({ width: 16384, height: 1, kind: 'VP8' }), RangeError, 'VP8 sizes are 14 bits')
  t.throws(() => makeWebp({ width: 16385, height: 1, kind: 'VP8L' }), RangeError, 'VP8L sizes are 14 bits of size-1')
  t.throws(() => makeWebp({ width: 0, height: 1, kind: 'VP8X' }), RangeError)
})

t.test('readPngSize', async (t) => {
  t.strictSame(readPngSize(makePng({ width: 123, height: 45 })), { width: 123, height: 45 })
  t.throws(() => readPngSize(Buffer.from('not a png at all, definitely not')))
  const wrongFirstChunk = makePng({ width: 2, height: 2 })
  wrongFirstChunk.write('IHDX', 12, 4, 'latin1')
  t.throws(() => readPngSize(wrongFirstChunk))
})
