// Request bodies for the bench: valid PNGs padded to an exact size, and multipart forms built byte
// by byte (the same construction as test/helpers/images.ts and test/helpers/multipart.ts, in plain
// JavaScript so that the bench runs on the built output without a TypeScript loader).
import { deflateSync } from 'node:zlib'

const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

const crcTable = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

function crc32(bytes) {
  let crc = ~0
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8)
  return ~crc >>> 0
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4, 4, 'latin1')
  data.copy(out, 8)
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
  return out
}

/** An RGB PNG of width×height noise, padded with a private ancillary chunk to exactly `padToBytes`. */
export function makePng({ width, height, padToBytes, seed = 1 }) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr.writeUInt8(8, 8)
  ihdr.writeUInt8(2, 9)
  const rowBytes = 1 + width * 3
  const pixels = Buffer.alloc(height * rowBytes)
  let state = (seed ^ 0x9e3779b9) >>> 0 || 1
  for (let i = 0; i < pixels.length; i++) {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    pixels[i] = i % rowBytes === 0 ? 0 : state & 0xff
  }
  const head = Buffer.concat([signature, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(pixels))])
  const end = chunk('IEND', Buffer.alloc(0))
  const paddingBytes = padToBytes - head.length - end.length - 12
  if (paddingBytes < 0) throw new RangeError(`padToBytes ${padToBytes} is too small`)
  const padding = Buffer.alloc(paddingBytes, 'image-gateway bench padding\n')
  return Buffer.concat([head, chunk('prVt', padding), end])
}

/** A multipart/form-data body: parts are { name, value } or { name, filename, contentType, data }. */
export function buildMultipart(parts, boundary = 'bench-boundary-5d1e08b7') {
  const pieces = []
  for (const part of parts) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"`
    if (part.filename !== undefined) head += `; filename="${part.filename}"\r\nContent-Type: ${part.contentType ?? 'image/png'}`
    pieces.push(Buffer.from(`${head}\r\n\r\n`), part.data ?? Buffer.from(part.value), Buffer.from('\r\n'))
  }
  pieces.push(Buffer.from(`--${boundary}--\r\n`))
  return { body: Buffer.concat(pieces), contentType: `multipart/form-data; boundary=${boundary}` }
}
