export type ImageFormat = 'png' | 'jpeg' | 'webp'

export interface ImageProbeResult {
  /** null when the bytes are none of PNG, JPEG, WebP */
  format: ImageFormat | null
  width: number | null
  height: number | null
  /** PNG only: IHDR colour type 4 or 6 (has an alpha channel), or a tRNS chunk seen before the first IDAT; null when unknown/not PNG */
  hasAlpha: boolean | null
}

/** Past this point the probe gives up, so a hostile upload cannot keep it walking chunks/segments forever. */
const maxScanBytes = 1024 * 1024

const pngSignature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
/** SOI (FF D8) followed by the 0xFF that starts the next marker. */
const jpegSignature = Buffer.from([0xff, 0xd8, 0xff])
const jpegSoiBytes = 2
const riffTag = Buffer.from('RIFF', 'latin1')
const webpTag = Buffer.from('WEBP', 'latin1')
/** "WEBP" sits after the 4-byte RIFF tag and the 4-byte RIFF size. */
const webpTagOffset = 8
/** PNG is recognisable after 8 bytes, JPEG after 3, WebP after 12 ("RIFF" size "WEBP"). */
const sniffBytes = 12
/** The furthest WebP field we read ends at byte 29 (VP8 height, VP8X canvas height). */
const webpHeaderBytes = 30

/** A fixed-size scratch buffer that is filled across chunk boundaries. */
class ByteCollector {
  readonly bytes: Buffer
  length = 0

  constructor(capacityBytes: number) {
    this.bytes = Buffer.alloc(capacityBytes)
  }

  /** Copies from `source[offset..]` until `wantBytes` are held; returns the offset after the copied bytes. */
  collect(source: Buffer, offset: number, wantBytes: number): number {
    const copyBytes = Math.min(wantBytes - this.length, source.length - offset)
    if (copyBytes <= 0) return offset
    source.copy(this.bytes, this.length, offset, offset + copyBytes)
    this.length += copyBytes
    return offset + copyBytes
  }

  view(): Buffer {
    return this.bytes.subarray(0, this.length)
  }
}

/** Follows one format's structure after its signature, keeping only counters and a small scratch buffer. */
interface FormatWalker {
  readonly done: boolean
  readonly width: number | null
  readonly height: number | null
  readonly hasAlpha: boolean | null
  push(bytes: Buffer): void
}

const chunkType = (fourcc: string): number => Buffer.from(fourcc, 'latin1').readUInt32BE(0)
const ihdrType = chunkType('IHDR')
const idatType = chunkType('IDAT')
const iendType = chunkType('IEND')
const trnsType = chunkType('tRNS')
/** Chunk length (4) + chunk type (4); PNG spec §5.3. */
const pngChunkHeaderBytes = 8
const pngCrcBytes = 4
/** PNG spec §11.2.2: width(4) height(4) depth(1) colour type(1) compression(1) filter(1) interlace(1). */
const ihdrDataBytes = 13
const ihdrColourTypeOffset = 9

class PngWalker implements FormatWalker {
  done = false
  width: number | null = null
  height: number | null = null
  hasAlpha: boolean | null = null
  readonly #scratch = new ByteCollector(ihdrDataBytes)
  #state: 'header' | 'ihdr' | 'skip' = 'header'
  #skipBytes = 0
  #sawIhdr = false

  push(bytes: Buffer): void {
    let offset = 0
    while (offset < bytes.length && !this.done) {
      switch (this.#state) {
        case 'skip': {
          const skippedBytes = Math.min(this.#skipBytes, bytes.length - offset)
          offset += skippedBytes
          this.#skipBytes -= skippedBytes
          if (this.#skipBytes === 0) this.#state = 'header'
          break
        }
        case 'header':
          offset = this.#scratch.collect(bytes, offset, pngChunkHeaderBytes)
          if (this.#scratch.length === pngChunkHeaderBytes) this.#onChunkHeader()
          break
        case 'ihdr':
          offset = this.#scratch.collect(bytes, offset, ihdrDataBytes)
          if (this.#scratch.length === ihdrDataBytes) this.#onIhdr()
          break
      }
    }
  }

  #onChunkHeader(): void {
    const dataBytes = this.#scratch.bytes.readUInt32BE(0)
    const type = this.#scratch.bytes.readUInt32BE(4)
    this.#scratch.length = 0
    if (!this.#sawIhdr) {
      // PNG spec §5.6: IHDR must be the first chunk; anything else is not a PNG we can read.
      if (type !== ihdrType || dataBytes < ihdrDataBytes) {
        this.done = true
        return
      }
      this.#sawIhdr = true
      this.#state = 'ihdr'
      this.#skipBytes = dataBytes - ihdrDataBytes + pngCrcBytes
      return
    }
    // PNG spec §11.3.2.1: tRNS must precede the first IDAT, so reaching IDAT/IEND settles the question.
    if (type === trnsType) {
      this.hasAlpha = true
      this.done = true
    } else if (type === idatType || type === iendType) {
      this.hasAlpha = false
      this.done = true
    } else {
      this.#state = 'skip'
      this.#skipBytes = dataBytes + pngCrcBytes
    }
  }

  #onIhdr(): void {
    const ihdr = this.#scratch.bytes
    this.width = ihdr.readUInt32BE(0)
    this.height = ihdr.readUInt32BE(4)
    const colourType = ihdr.readUInt8(ihdrColourTypeOffset)
    this.#scratch.length = 0
    this.#state = 'skip'
    // PNG spec §11.2.2 table 11.1: 4 = greyscale+alpha, 6 = truecolour+alpha; 0, 2, 3 may still get a tRNS.
    if (colourType === 4 || colourType === 6) {
      this.hasAlpha = true
      this.done = true
    } else if (colourType !== 0 && colourType !== 2 && colourType !== 3) {
      this.done = true
    }
  }
}

/** ITU-T T.81 table B.1: TEM, RST0–RST7 and SOI stand alone (no length field). */
const isStandaloneMarker = (code: number): boolean => code === 0x01 || (code >= 0xd0 && code <= 0xd8)
/** ITU-T T.81 table B.1: C0–CF are SOFn except C4 (DHT), C8 (JPG, reserved) and CC (DAC). */
const isSofMarker = (code: number): boolean => code >= 0xc0 && code <= 0xcf && code !== 0xc4 && code !== 0xc8 && code !== 0xcc
const jpegEoi = 0xd9
const jpegSos = 0xda
const jpegLengthBytes = 2
/** ITU-T T.81 B.2.2: P(1) Y(2) X(2) lead the frame header. */
const sofDimensionBytes = 5

class JpegWalker implements FormatWalker {
  done = false
  width: number | null = null
  height: number | null = null
  readonly hasAlpha = null
  readonly #scratch = new ByteCollector(sofDimensionBytes)
  #state: 'marker' | 'code' | 'length' | 'sof' | 'skip' = 'marker'
  #marker = 0
  #skipBytes = 0

  push(bytes: Buffer): void {
    let offset = 0
    while (offset < bytes.length && !this.done) {
      switch (this.#state) {
        case 'marker':
          // Between segments only a marker may appear (T.81 B.1.1.2); anything else is a broken file.
          if (bytes.readUInt8(offset) === 0xff) this.#state = 'code'
          else this.done = true
          offset += 1
          break
        case 'code':
          this.#onMarker(bytes.readUInt8(offset))
          offset += 1
          break
        case 'length':
          offset = this.#scratch.collect(bytes, offset, jpegLengthBytes)
          if (this.#scratch.length === jpegLengthBytes) this.#onLength(this.#scratch.bytes.readUInt16BE(0))
          break
        case 'sof':
          offset = this.#scratch.collect(bytes, offset, sofDimensionBytes)
          if (this.#scratch.length === sofDimensionBytes) this.#onSof()
          break
        case 'skip': {
          const skippedBytes = Math.min(this.#skipBytes, bytes.length - offset)
          offset += skippedBytes
          this.#skipBytes -= skippedBytes
          if (this.#skipBytes === 0) this.#state = 'marker'
          break
        }
      }
    }
  }

  #onMarker(code: number): void {
    // T.81 B.1.1.2: any marker may be preceded by any number of 0xFF fill bytes.
    if (code === 0xff) return
    if (code === jpegEoi || code === jpegSos || code === 0x00) {
      // Image data (or the end) without a frame header: nothing more to learn. FF 00 is only valid inside entropy data.
      this.done = true
    } else if (isStandaloneMarker(code)) {
      this.#state = 'marker'
    } else {
      this.#marker = code
      this.#scratch.length = 0
      this.#state = 'length'
    }
  }

  #onLength(segmentBytes: number): void {
    this.#scratch.length = 0
    // The length field counts itself (T.81 B.1.1.4).
    const payloadBytes = segmentBytes - jpegLengthBytes
    if (isSofMarker(this.#marker)) {
      if (payloadBytes < sofDimensionBytes) this.done = true
      else this.#state = 'sof'
    } else if (payloadBytes < 0) {
      this.done = true
    } else if (payloadBytes === 0) {
      this.#state = 'marker'
    } else {
      this.#state = 'skip'
      this.#skipBytes = payloadBytes
    }
  }

  #onSof(): void {
    const frame = this.#scratch.bytes
    const lines = frame.readUInt16BE(1)
    // T.81 B.2.2: Y = 0 means the height is only given later by a DNL marker, so it is unknown here.
    this.height = lines === 0 ? null : lines
    this.width = frame.readUInt16BE(3)
    this.done = true
  }
}

interface PixelSize {
  width: number
  height: number
}

/** Header bytes needed to read each WebP image chunk's size (RFC 9649, "Simple/Extended File Format"). */
const webpHeaderBytesByChunk = { 'VP8 ': webpHeaderBytes, VP8L: 25, VP8X: webpHeaderBytes } as const
type WebpImageChunk = keyof typeof webpHeaderBytesByChunk
const isWebpImageChunk = (fourcc: string): fourcc is WebpImageChunk => Object.hasOwn(webpHeaderBytesByChunk, fourcc)

function readWebpSize(header: Buffer, fourcc: WebpImageChunk): PixelSize | null {
  switch (fourcc) {
    case 'VP8 ':
      // RFC 6386 §9.1: a key frame's 3-byte frame tag is followed by the start code 9D 01 2A, then 14-bit sizes (+2 scale bits).
      if (header.readUIntBE(23, 3) !== 0x9d012a) return null
      return { width: header.readUInt16LE(26) & 0x3fff, height: header.readUInt16LE(28) & 0x3fff }
    case 'VP8L': {
      // RFC 9649 lossless bitstream header: signature 0x2F, then 14-bit width-1 and 14-bit height-1, least significant bits first.
      if (header.readUInt8(20) !== 0x2f) return null
      const bits = header.readUInt32LE(21)
      return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 }
    }
    case 'VP8X':
      // RFC 9649 "Extended File Format": flags(1) reserved(3), then 24-bit canvas width-1 and height-1.
      return { width: header.readUIntLE(24, 3) + 1, height: header.readUIntLE(27, 3) + 1 }
  }
}

type SniffVerdict = ImageFormat | 'undecided' | 'unknown'

/** Whether the bytes of `head` that overlap `signature` (placed at `at`) agree with it. */
function agreesWith(head: Buffer, at: number, signature: Buffer): boolean {
  const overlapBytes = Math.min(head.length - at, signature.length)
  if (overlapBytes <= 0) return true
  return head.subarray(at, at + overlapBytes).equals(signature.subarray(0, overlapBytes))
}

function sniff(head: Buffer): SniffVerdict {
  if (agreesWith(head, 0, pngSignature)) return head.length >= pngSignature.length ? 'png' : 'undecided'
  if (agreesWith(head, 0, jpegSignature)) return head.length >= jpegSignature.length ? 'jpeg' : 'undecided'
  if (agreesWith(head, 0, riffTag) && agreesWith(head, webpTagOffset, webpTag)) {
    return head.length >= webpTagOffset + webpTag.length ? 'webp' : 'undecided'
  }
  return 'unknown'
}

/**
 * Learns an image's format and pixel size from its first bytes, fed chunk by chunk,
 * holding at most a few dozen bytes of scratch space whatever the file size.
 */
export class ImageProbe {
  readonly #head = new ByteCollector(webpHeaderBytes)
  #scannedBytes = 0
  #format: ImageFormat | null = null
  #walker: FormatWalker | null = null
  #webpSize: PixelSize | null = null
  #done = false

  /** Feed the next bytes of the file, in order. Must be cheap per call; once done, it ignores further input in O(1). */
  push(chunk: Buffer): void {
    if (this.#done) return
    // Bytes past maxScanBytes are never looked at, so the outcome does not depend on how the file was chunked.
    const budgetBytes = maxScanBytes - this.#scannedBytes
    const input = chunk.length > budgetBytes ? chunk.subarray(0, budgetBytes) : chunk
    this.#scannedBytes += input.length

    let offset = 0
    if (this.#format === null) offset = this.#sniff(input)
    if (this.#format === 'webp' && !this.#done) {
      this.#readWebpHeader(input, offset)
    } else if (this.#walker !== null && !this.#done) {
      this.#walker.push(input.subarray(offset))
      if (this.#walker.done) this.#done = true
    }
    if (this.#scannedBytes >= maxScanBytes) this.#done = true
  }

  /** true once everything it can learn is known (or it has given up / format is unknown). */
  get done(): boolean {
    return this.#done
  }

  /** Best knowledge so far (call at any time, e.g. at end of file). */
  result(): ImageProbeResult {
    const walker = this.#walker
    if (walker !== null) {
      return { format: this.#format, width: walker.width, height: walker.height, hasAlpha: walker.hasAlpha }
    }
    return {
      format: this.#format,
      width: this.#webpSize?.width ?? null,
      height: this.#webpSize?.height ?? null,
      hasAlpha: null
    }
  }

  /** Collects the first bytes and decides the format; returns how much of `input` it consumed. */
  #sniff(input: Buffer): number {
    const offset = this.#head.collect(input, 0, sniffBytes)
    const verdict = sniff(this.#head.view())
    switch (verdict) {
      case 'undecided':
        break
      case 'unknown':
        this.#done = true
        break
      case 'png':
        this.#startWalker('png', new PngWalker(), pngSignature.length)
        break
      case 'jpeg':
        this.#startWalker('jpeg', new JpegWalker(), jpegSoiBytes)
        break
      case 'webp':
        this.#format = 'webp'
        break
    }
    return offset
  }

  /** Hands the walker the already-sniffed bytes that follow the signature it starts after. */
  #startWalker(format: ImageFormat, walker: FormatWalker, signatureBytes: number): void {
    this.#format = format
    this.#walker = walker
    walker.push(this.#head.view().subarray(signatureBytes))
  }

  #readWebpHeader(input: Buffer, offset: number): void {
    this.#head.collect(input, offset, webpHeaderBytes)
    const head = this.#head.view()
    // RFC 9649 "RIFF Header": the first chunk's FourCC follows "RIFF" size "WEBP".
    if (head.length < sniffBytes + 4) return
    const fourcc = head.toString('latin1', sniffBytes, sniffBytes + 4)
    if (!isWebpImageChunk(fourcc)) {
      this.#done = true
    } else if (head.length >= webpHeaderBytesByChunk[fourcc]) {
      this.#webpSize = readWebpSize(head, fourcc)
      this.#done = true
    }
  }
}
