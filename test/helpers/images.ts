import { deflateSync } from 'node:zlib'

/*
 * Builders of real, structurally valid image files for tests, using only Buffer and node:zlib.
 * PNG follows ISO/IEC 15948 (W3C PNG 2nd ed.), JPEG follows ITU-T T.81, WebP follows RFC 9649 / RFC 6386.
 */

const pngSignature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
/** Length (4) + type (4) + CRC (4) around every chunk's data; PNG spec §5.3. */
const pngChunkOverheadBytes = 12
const ihdrDataBytes = 13
/** Ancillary (lowercase first letter), private (lowercase second), safe-to-copy (lowercase fourth): decoders must ignore it (§5.4). */
const paddingChunkType = 'prVt'
const paddingPattern = Buffer.from('image-gateway test padding\n', 'latin1')

const crcTable = ((): Uint32Array => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** The CRC-32 PNG uses (ISO 3309 / ITU-T V.42, PNG spec annex D); zlib.crc32 only exists from Node 20.15. */
function crc32(bytes: Uint8Array, previous = 0): number {
  let crc = ~previous
  for (let i = 0; i < bytes.length; i++) {
    crc = (crcTable[(crc ^ (bytes[i] as number)) & 0xff] as number) ^ (crc >>> 8)
  }
  return ~crc >>> 0
}

/** Writes one chunk (length, type, data, CRC over type+data) into `target` at `offset`; returns the offset after it. */
function writeChunk(target: Buffer, offset: number, type: string, data: Buffer): number {
  target.writeUInt32BE(data.length, offset)
  target.write(type, offset + 4, 4, 'latin1')
  data.copy(target, offset + 8)
  const crcEnd = offset + 8 + data.length
  target.writeUInt32BE(crc32(target.subarray(offset + 4, crcEnd)), crcEnd)
  return crcEnd + 4
}

/** xorshift32: deterministic bytes per seed, so different seeds give different files. */
function pixelBytes(lengthBytes: number, seed: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes)
  let state = (seed ^ 0x9e3779b9) >>> 0 || 1
  for (let i = 0; i < lengthBytes; i++) {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    bytes[i] = state & 0xff
  }
  return bytes
}

function assertDimension(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new RangeError(`${name} must be an integer in 1..${max}, got ${value}`)
  }
}

export function makePng(opts: { width: number; height: number; alpha?: boolean; padToBytes?: number; seed?: number }): Buffer {
  const { width, height, alpha = false, padToBytes, seed = 0 } = opts
  // PNG spec §11.2.2: width and height are 1..2^31-1.
  assertDimension('width', width, 0x7fffffff)
  assertDimension('height', height, 0x7fffffff)
  const channels = alpha ? 4 : 3
  const rowBytes = 1 + width * channels

  const ihdr = Buffer.alloc(ihdrDataBytes)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr.writeUInt8(8, 8) // bit depth
  ihdr.writeUInt8(alpha ? 6 : 2, 9) // colour type: truecolour with / without alpha
  // compression, filter method and interlace stay 0 (deflate, adaptive filtering, no interlace)

  const scanlines = pixelBytes(height * rowBytes, seed)
  // Filter type 0 (None) at the start of every scanline (§9.2), so the pixel bytes are stored as they are.
  for (let row = 0; row < height; row++) scanlines[row * rowBytes] = 0
  const idat = deflateSync(scanlines)

  const unpaddedBytes = pngSignature.length + 3 * pngChunkOverheadBytes + ihdr.length + idat.length
  let paddingDataBytes: number | null = null
  if (padToBytes !== undefined) {
    paddingDataBytes = padToBytes - unpaddedBytes - pngChunkOverheadBytes
    if (!Number.isInteger(padToBytes) || paddingDataBytes < 0) {
      throw new RangeError(`padToBytes ${padToBytes} is below the smallest padded size ${unpaddedBytes + pngChunkOverheadBytes}`)
    }
  }

  const totalBytes = unpaddedBytes + (paddingDataBytes === null ? 0 : pngChunkOverheadBytes + paddingDataBytes)
  const png = Buffer.allocUnsafe(totalBytes)
  let offset = pngSignature.copy(png, 0)
  offset = writeChunk(png, offset, 'IHDR', ihdr)
  offset = writeChunk(png, offset, 'IDAT', idat)
  if (paddingDataBytes !== null) {
    // Filled in place rather than built separately and copied, so tens of MB stay cheap.
    png.writeUInt32BE(paddingDataBytes, offset)
    png.write(paddingChunkType, offset + 4, 4, 'latin1')
    const dataEnd = offset + 8 + paddingDataBytes
    if (paddingDataBytes > 0) png.fill(paddingPattern, offset + 8, dataEnd)
    png.writeUInt32BE(crc32(png.subarray(offset + 4, dataEnd)), dataEnd)
    offset = dataEnd + 4
  }
  writeChunk(png, offset, 'IEND', Buffer.alloc(0))
  return png
}

export function readPngSize(png: Buffer): { width: number; height: number } {
  const ihdrEnd = pngSignature.length + 8 + ihdrDataBytes
  if (png.length < ihdrEnd || !png.subarray(0, pngSignature.length).equals(pngSignature)) {
    throw new Error('not a PNG')
  }
  if (png.toString('latin1', 12, 16) !== 'IHDR') throw new Error('PNG does not start with IHDR')
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) }
}

function jpegSegment(marker: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(4)
  header.writeUInt8(0xff, 0)
  header.writeUInt8(marker, 1)
  // The length counts itself but not the marker (T.81 B.1.1.4).
  header.writeUInt16BE(payload.length + 2, 2)
  return Buffer.concat([header, payload])
}

/**
 * A baseline greyscale JPEG that decodes to flat grey: every 8×8 block is coded as
 * "DC difference 0, end of block" with one-code Huffman tables, i.e. 2 bits per block.
 */
export function makeJpeg(opts: { width: number; height: number }): Buffer {
  const { width, height } = opts
  // T.81 B.2.2: X is 1..65535; Y = 0 would defer the height to a DNL marker, which we never want here.
  assertDimension('width', width, 0xffff)
  assertDimension('height', height, 0xffff)

  const app0 = Buffer.concat([
    Buffer.from('JFIF\0', 'latin1'),
    Buffer.from([1, 1, 0, 0, 1, 0, 1, 0, 0]) // version 1.01, no units, 1:1 density, no thumbnail
  ])
  const dqt = Buffer.concat([Buffer.from([0x00]), Buffer.alloc(64, 1)]) // 8-bit table 0, all quantisers 1
  const sof0 = Buffer.alloc(9)
  sof0.writeUInt8(8, 0) // sample precision
  sof0.writeUInt16BE(height, 1)
  sof0.writeUInt16BE(width, 3)
  sof0.writeUInt8(1, 5) // one component: id 1, 1×1 sampling, quantisation table 0
  sof0.writeUInt8(1, 6)
  sof0.writeUInt8(0x11, 7)
  sof0.writeUInt8(0, 8)
  // DHT (T.81 B.2.4.2): class/id, 16 code-length counts, symbols. One 1-bit code each: DC symbol 0 (no difference), AC symbol 0x00 (EOB).
  const oneCodeTable = (classAndId: number): Buffer => Buffer.concat([Buffer.from([classAndId, 1]), Buffer.alloc(15), Buffer.from([0x00])])
  const dht = Buffer.concat([oneCodeTable(0x00), oneCodeTable(0x10)])
  const sos = Buffer.from([1, 1, 0x00, 0, 63, 0]) // one component using DC/AC tables 0; Ss=0, Se=63, Ah/Al=0

  const blocks = Math.ceil(width / 8) * Math.ceil(height / 8)
  const scanBits = 2 * blocks // both codes are a single 0 bit
  const scan = Buffer.alloc(Math.ceil(scanBits / 8))
  const spareBits = scan.length * 8 - scanBits
  // F.1.2.3: the last byte is padded with 1-bits; it starts with 0-bits, so it can never be 0xFF and needs no stuffing.
  if (spareBits > 0) scan[scan.length - 1] = (1 << spareBits) - 1

  return Buffer.concat([
    Buffer.from([0xff, 0xd8]),
    jpegSegment(0xe0, app0),
    jpegSegment(0xdb, dqt),
    jpegSegment(0xc0, sof0),
    jpegSegment(0xc4, dht),
    jpegSegment(0xda, sos),
    scan,
    Buffer.from([0xff, 0xd9])
  ])
}

/** A RIFF chunk; odd-sized payloads get a pad byte that the size does not count (RFC 9649 "RIFF File Format"). */
function riffChunk(fourcc: string, payload: Buffer): Buffer {
  const header = Buffer.alloc(8)
  header.write(fourcc, 0, 4, 'latin1')
  header.writeUInt32LE(payload.length, 4)
  const pad = payload.length % 2 === 1 ? Buffer.alloc(1) : Buffer.alloc(0)
  return Buffer.concat([header, payload, pad])
}

/**
 * A complete lossless bitstream: header, then no transforms, no colour cache, no meta prefix codes,
 * and five "simple" prefix codes of one symbol 0 each, so every pixel costs 0 bits (transparent black).
 */
function vp8lBitstream(width: number, height: number): Buffer {
  const header = Buffer.alloc(5)
  header.writeUInt8(0x2f, 0)
  // 14 bits width-1, 14 bits height-1, alpha_is_used = 0, version = 0 (3 bits), least significant bit first.
  header.writeUInt32LE(((width - 1) | ((height - 1) << 14)) >>> 0, 1)
  // Bits LSB first: 0 0 0 (transform, colour cache, meta codes), then 5 × [1 simple, 0 one symbol, 0 1-bit symbol, 0 symbol].
  return Buffer.concat([header, Buffer.from([0x88, 0x88, 0x08])])
}

/** A VP8 key-frame header (RFC 6386 §9.1) followed by placeholder partition bytes; the header fields are exact. */
function vp8Bitstream(width: number, height: number): Buffer {
  const partitionBytes = 10
  const frame = Buffer.alloc(10 + partitionBytes)
  // Frame tag: bit 0 = 0 (key frame), bits 1-3 version 0, bit 4 show_frame, bits 5-23 first partition size.
  frame.writeUIntLE(((partitionBytes << 5) | 0x10) >>> 0, 0, 3)
  frame.writeUIntBE(0x9d012a, 3, 3)
  // Upper 2 bits of each size are the scale, left 0 (no upscaling).
  frame.writeUInt16LE(width, 6)
  frame.writeUInt16LE(height, 8)
  return frame
}

export function makeWebp(opts: { width: number; height: number; kind?: 'VP8' | 'VP8L' | 'VP8X' }): Buffer {
  const { width, height, kind = 'VP8' } = opts
  let chunks: Buffer
  switch (kind) {
    case 'VP8':
      assertDimension('width', width, 0x3fff)
      assertDimension('height', height, 0x3fff)
      chunks = riffChunk('VP8 ', vp8Bitstream(width, height))
      break
    case 'VP8L':
      assertDimension('width', width, 0x4000)
      assertDimension('height', height, 0x4000)
      chunks = riffChunk('VP8L', vp8lBitstream(width, height))
      break
    case 'VP8X': {
      // The canvas must match the single frame, which is VP8L here, so the 14-bit limit applies.
      assertDimension('width', width, 0x4000)
      assertDimension('height', height, 0x4000)
      const vp8x = Buffer.alloc(10) // flags and reserved bits all 0: still image, no ICC/alpha/Exif/XMP
      vp8x.writeUIntLE(width - 1, 4, 3)
      vp8x.writeUIntLE(height - 1, 7, 3)
      chunks = Buffer.concat([riffChunk('VP8X', vp8x), riffChunk('VP8L', vp8lBitstream(width, height))])
      break
    }
  }
  const riffHeader = Buffer.alloc(12)
  riffHeader.write('RIFF', 0, 4, 'latin1')
  // The RIFF size counts everything after itself: "WEBP" plus the chunks.
  riffHeader.writeUInt32LE(4 + chunks.length, 4)
  riffHeader.write('WEBP', 8, 4, 'latin1')
  return Buffer.concat([riffHeader, chunks])
}
