import { parseDisposition } from './disposition.js'

/**
 * A streaming multipart/form-data framing scanner (RFC 7578, RFC 2046 §5.1.1). It never copies a
 * part's body: `partData` gets views into the caller's chunks, with their offset in the whole body,
 * so the relay can forward the very same bytes and knows where each value sits. It holds at most
 * one part's header block and a delimiter's length of carried bytes.
 */
export interface PartInfo {
  name: string
  /** Present (possibly empty) for file parts. */
  filename: string | null
  contentType: string | null
}

export interface ScannerEvents {
  partStart(part: PartInfo): void
  /** `offset`: where `data` starts in the whole body. */
  partData(data: Buffer, offset: number): void
  partEnd(): void
  /** `closeOffset`: where the closing delimiter (its leading CRLF) starts in the whole body. */
  formEnd(closeOffset: number): void
}

export class MultipartSyntaxError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'MultipartSyntaxError'
  }
}

export const MAX_PART_HEADER_BYTES = 16 * 1024
/** A part needs Content-Disposition and maybe Content-Type; busboy's default allows 2000 (reliability.md case 11). */
export const MAX_PART_HEADER_LINES = 32
const CR = 13
const LF = 10
const DASH = 45
const CRLFCRLF = Buffer.from('\r\n\r\n')

type State = 'preamble' | 'body' | 'afterDelimiter' | 'closeDash' | 'padding' | 'lf' | 'headers' | 'epilogue'

/** RFC 2046: 1-70 characters, and no CR/LF; anything we could not search for safely is refused. */
export function isValidBoundary(boundary: string): boolean {
  return /^[\x20-\x7e]{1,70}$/.test(boundary)
}

export class MultipartScanner {
  private readonly delimiter: Buffer
  private readonly events: ScannerEvents
  private state: State = 'preamble'
  /** Preamble/body bytes at a chunk's end that may begin a delimiter. */
  private carry: Buffer
  private carryOffset = -2
  /** Where the current chunk starts in the body. */
  private position = 0
  private headerBlock = Buffer.alloc(0)
  private headerLength = 0
  private delimiterOffset = 0

  constructor(boundary: string, events: ScannerEvents) {
    this.delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1')
    this.events = events
    // The first delimiter may open the body with no CRLF before it: scan as if one were there.
    this.carry = Buffer.from('\r\n')
  }

  get complete(): boolean {
    return this.state === 'epilogue'
  }

  write(chunk: Buffer): void {
    let i = 0
    while (i < chunk.length && this.state !== 'epilogue') {
      switch (this.state) {
        case 'preamble':
        case 'body':
          i = this.scanBody(chunk, i)
          break
        case 'headers':
          i = this.readHeaders(chunk, i)
          break
        default:
          this.readDelimiterTail(chunk[i] as number)
          i++
      }
    }
    this.position += chunk.length
  }

  /** The body ended; throws when the form did not close. */
  end(): void {
    if (this.state !== 'epilogue') throw new MultipartSyntaxError('the multipart body ended before its closing boundary')
  }

  private emit(data: Buffer, offset: number): void {
    if (this.state === 'body' && data.length > 0) this.events.partData(data, offset)
  }

  private onDelimiter(offset: number): void {
    this.delimiterOffset = offset
    if (this.state === 'body') this.events.partEnd()
    this.state = 'afterDelimiter'
  }

  private scanBody(chunk: Buffer, start: number): number {
    const delimiter = this.delimiter
    if (this.carry.length > 0) {
      const carry = this.carry
      const window = Buffer.concat([carry, chunk.subarray(start, start + delimiter.length - 1)])
      const found = window.indexOf(delimiter)
      if (found !== -1) {
        // A delimiter that begins in the carried bytes (it may end in them, or in this chunk).
        this.carry = Buffer.alloc(0)
        this.emit(window.subarray(0, found), this.carryOffset)
        this.onDelimiter(this.carryOffset + found)
        return start + found + delimiter.length - carry.length
      }
      if (window.length < delimiter.length - 1 + carry.length) {
        // This chunk was too short to settle it: keep carrying what may still begin a delimiter.
        const keep = partialDelimiterStart(window, delimiter, 0)
        this.emit(window.subarray(0, keep), this.carryOffset)
        this.carryOffset += keep
        this.carry = Buffer.from(window.subarray(keep))
        return chunk.length
      }
      this.carry = Buffer.alloc(0)
      this.emit(carry, this.carryOffset)
    }
    const found = chunk.indexOf(delimiter, start)
    if (found !== -1) {
      this.emit(chunk.subarray(start, found), this.position + start)
      this.onDelimiter(this.position + found)
      return found + delimiter.length
    }
    const keep = partialDelimiterStart(chunk, delimiter, start)
    this.emit(chunk.subarray(start, keep), this.position + start)
    if (keep < chunk.length) {
      this.carry = Buffer.from(chunk.subarray(keep))
      this.carryOffset = this.position + keep
    }
    return chunk.length
  }

  /** After `--boundary`: `--` closes the form; otherwise optional padding, then CRLF. */
  private readDelimiterTail(byte: number): void {
    switch (this.state) {
      case 'afterDelimiter':
        if (byte === DASH) this.state = 'closeDash'
        else if (byte === CR) this.state = 'lf'
        else if (byte === 0x20 || byte === 0x09) this.state = 'padding'
        else throw new MultipartSyntaxError('a boundary is followed by neither CRLF nor "--"')
        return
      case 'closeDash':
        if (byte !== DASH) throw new MultipartSyntaxError('a boundary is followed by a single "-"')
        this.state = 'epilogue'
        this.events.formEnd(Math.max(0, this.delimiterOffset))
        return
      case 'padding':
        if (byte === CR) this.state = 'lf'
        else if (byte !== 0x20 && byte !== 0x09) throw new MultipartSyntaxError('junk after a boundary')
        return
      case 'lf':
        if (byte !== LF) throw new MultipartSyntaxError('a boundary line does not end with CRLF')
        this.state = 'headers'
        this.headerBlock = Buffer.alloc(MAX_PART_HEADER_BYTES + 2)
        // Seeded with CRLF so that a part with no headers (a bare CRLF) ends the block too.
        this.headerBlock[0] = CR
        this.headerBlock[1] = LF
        this.headerLength = 2
        return
      default:
        throw new Error(`unexpected scanner state ${this.state}`)
    }
  }

  private readHeaders(chunk: Buffer, start: number): number {
    const room = this.headerBlock.length - this.headerLength
    const take = Math.min(room, chunk.length - start)
    chunk.copy(this.headerBlock, this.headerLength, start, start + take)
    const searchFrom = Math.max(0, this.headerLength - 3)
    this.headerLength += take
    const end = this.headerBlock.subarray(0, this.headerLength).indexOf(CRLFCRLF, searchFrom)
    if (end === -1) {
      if (this.headerLength >= this.headerBlock.length) {
        throw new MultipartSyntaxError(`a part's headers are over ${MAX_PART_HEADER_BYTES} bytes`)
      }
      return start + take
    }
    const consumed = end + 4 - (this.headerLength - take)
    const part = parsePartHeaders(this.headerBlock.toString('utf8', 2, end))
    this.headerBlock = Buffer.alloc(0)
    this.state = 'body'
    this.events.partStart(part)
    return start + consumed
  }
}

/** Where a suffix of `data` (from `min` on) that is a prefix of `delimiter` begins; data.length when none. */
function partialDelimiterStart(data: Buffer, delimiter: Buffer, min: number): number {
  const from = Math.max(min, data.length - delimiter.length + 1)
  for (let p = data.indexOf(CR, from); p !== -1; p = data.indexOf(CR, p + 1)) {
    if (data.subarray(p).equals(delimiter.subarray(0, data.length - p))) return p
  }
  return data.length
}

function parsePartHeaders(block: string): PartInfo {
  let disposition: ReturnType<typeof parseDisposition> = null
  let contentType: string | null = null
  const lines = block.split('\r\n')
  if (lines.length > MAX_PART_HEADER_LINES) throw new MultipartSyntaxError(`a part has more than ${MAX_PART_HEADER_LINES} header lines`)
  for (const line of lines) {
    if (line === '') continue
    const colon = line.indexOf(':')
    if (colon <= 0) throw new MultipartSyntaxError('a part header line has no name')
    const name = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    if (name === 'content-disposition') disposition = parseDisposition(value)
    else if (name === 'content-type') contentType = value
  }
  if (disposition === null) throw new MultipartSyntaxError('a part has no form-data Content-Disposition with a name')
  return { name: disposition.name, filename: disposition.filename, contentType }
}
