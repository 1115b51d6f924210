import { Transform, type TransformCallback } from 'node:stream'
import { parseDisposition } from './disposition.js'
import { MAX_PART_HEADER_BYTES } from './scanner.js'

const CR = 13
const LF = 10
const DASH = 45
const CRLF = Buffer.from('\r\n')
const HEADERS_END = Buffer.from('\r\n\r\n')

/**
 * A multipart/form-data body with the parts named in `names` taken out, every other byte kept.
 *
 * A part is taken as its delimiter (`\r\n--boundary`), the rest of that line, headers, a blank
 * line and a value running up to the next delimiter, so a part dropped together with its delimiter
 * leaves the next delimiter right after the previous part. The body is read as if it began with a
 * CRLF that is never sent, so the first delimiter (`--boundary` at offset 0) is found like the others.
 *
 * States: `pass` (sending) and `drop` (discarding) look for the next delimiter, holding back only a
 * chunk tail that may begin one; `headers` holds a delimiter and its header block until the blank
 * line, then picks `pass` or `drop` for the part; `epilogue` (after `--boundary--`) sends everything.
 * A header block over MAX_PART_HEADER_BYTES (the scanner's own limit), or a delimiter line that is
 * not `--boundary[whitespace]CRLF`, is not judged: it passes as it is, as does any malformed input.
 */
export function dropFormFields(boundary: string, names: ReadonlySet<string>): Transform {
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1')
  /** The held header block may reach this far: delimiter, the line's CRLF, headers, blank line. */
  const headerWindow = delimiter.length + CRLF.length + MAX_PART_HEADER_BYTES
  let held: Buffer = CRLF
  /** Bytes at the start of `held` that were never sent by the client (the made-up leading CRLF). */
  let unsent = CRLF.length
  let mode: 'pass' | 'drop' | 'headers' | 'epilogue' = 'pass'
  /** The first part was dropped: the next delimiter sent opens the body, so loses its CRLF. */
  let stripCrlf = false

  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      held = held.length === 0 ? chunk : Buffer.concat([held, chunk])
      scan(this, false)
      // A short tail is copied, so that it does not keep a large chunk alive.
      if (mode !== 'headers' && held.length > 0) held = Buffer.from(held)
      callback()
    },
    flush(callback: TransformCallback) {
      scan(this, true)
      callback()
    }
  })

  /** Sends held[0, end), or discards it while dropping. */
  function send(out: Transform, end: number): void {
    const skip = Math.min(unsent, end)
    unsent -= skip
    let bytes = held.subarray(skip, end)
    held = held.subarray(end)
    if (mode === 'drop' || bytes.length === 0) return
    if (stripCrlf && bytes[0] === CR && bytes[1] === LF) bytes = bytes.subarray(2)
    stripCrlf = false
    if (bytes.length > 0) out.push(bytes)
  }

  function scan(out: Transform, ending: boolean): void {
    for (;;) {
      if (mode === 'epilogue') return send(out, held.length)
      if (mode === 'pass' || mode === 'drop') {
        const at = held.indexOf(delimiter)
        if (at === -1) return send(out, ending ? held.length : partialDelimiterStart(held, delimiter))
        send(out, at)
        mode = 'headers'
      }
      // `held` starts with a delimiter.
      const decided = judgePart(ending)
      if (decided === null) return
      if (decided === 'drop' && unsent > 0) stripCrlf = true
      mode = decided === 'unjudged' ? 'pass' : decided
      // A part not judged passes from its delimiter on; its headers are searched for delimiters too.
      if (decided === 'unjudged') send(out, delimiter.length)
      else if (decided !== 'epilogue') send(out, headersEnd() + HEADERS_END.length)
    }
  }

  function headersEnd(): number {
    return held.subarray(0, headerWindow).indexOf(HEADERS_END, delimiter.length)
  }

  /** What the held delimiter opens; null while more bytes are needed to know. */
  function judgePart(ending: boolean): 'pass' | 'drop' | 'epilogue' | 'unjudged' | null {
    if (held.length < delimiter.length + 2) return ending ? 'unjudged' : null
    if (held[delimiter.length] === DASH && held[delimiter.length + 1] === DASH) return 'epilogue'
    const end = headersEnd()
    if (end === -1) return ending || held.length >= headerWindow ? 'unjudged' : null
    const [line = '', ...headers] = held.toString('utf8', delimiter.length, end).split('\r\n')
    if (!/^[ \t]*$/.test(line)) return 'unjudged'
    const name = partName(headers)
    return name !== null && names.has(name) ? 'drop' : 'pass'
  }
}

/** The part's name, read as the scanner reads it (the last Content-Disposition header counts). */
function partName(headers: readonly string[]): string | null {
  let name: string | null = null
  for (const line of headers) {
    const colon = line.indexOf(':')
    if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === 'content-disposition') {
      name = parseDisposition(line.slice(colon + 1).trim())?.name ?? null
    }
  }
  return name
}

/** Where a suffix of `data` that is a prefix of `delimiter` begins; data.length when none. */
function partialDelimiterStart(data: Buffer, delimiter: Buffer): number {
  const from = Math.max(0, data.length - delimiter.length + 1)
  for (let p = data.indexOf(CR, from); p !== -1; p = data.indexOf(CR, p + 1)) {
    if (data.subarray(p).equals(delimiter.subarray(0, data.length - p))) return p
  }
  return data.length
}
