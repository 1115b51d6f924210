import { Transform, type TransformCallback } from 'node:stream'

const CRLF = Buffer.from('\r\n', 'latin1')
const HEADERS_END = Buffer.from('\r\n\r\n', 'latin1')
/** A part whose headers are longer than this is passed on as it is, never held whole. */
const MAX_HEADER_BYTES = 16 * 1024
const NAME = /;\s*name\s*=\s*(?:"([^"]*)"|([^;\s]+))/i

type Mode = 'pass' | 'drop' | 'headers' | 'epilogue'

function partName(headers: string): string | null {
  for (const line of headers.split('\r\n')) {
    if (!/^content-disposition\s*:/i.test(line)) continue
    const match = NAME.exec(line)
    return match?.[1] ?? match?.[2] ?? null
  }
  return null
}

/**
 * A multipart/form-data body with the parts named in `names` taken out, every other byte kept.
 * A part is a delimiter (`\r\n--boundary`), headers, a blank line and a value, up to the next
 * delimiter; a dropped part goes with its delimiter, so the next one follows the previous part.
 * The stream is read as if it began with `\r\n` (two bytes never sent), so that the first
 * delimiter looks like every other. Held back are only a tail that may be the start of a
 * delimiter, and a part's headers until they end (at most 16 KiB): memory stays small.
 */
export function dropFormFields(boundary: string, names: ReadonlySet<string>): Transform {
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1')
  let held: Buffer = CRLF
  /** Bytes at the start of `held` that were never sent by the client (the leading CRLF). */
  let unsent = CRLF.length
  let mode: Mode = 'pass'
  let sentAny = false
  /** Parts were dropped before any byte went out: the next delimiter's CRLF would open the body. */
  let droppedFirst = false

  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      held = held.length === 0 ? chunk : Buffer.concat([held, chunk])
      scan(this, false)
      callback()
    },
    flush(callback: TransformCallback) {
      scan(this, true)
      if (mode !== 'drop') send(this, held.length)
      held = Buffer.alloc(0)
      callback()
    }
  })

  /** Sends (or, dropping, discards) held[0, end). */
  function send(out: Transform, end: number, keep = mode !== 'drop'): void {
    const from = Math.min(unsent, end)
    unsent -= from
    let bytes = held.subarray(from, end)
    held = held.subarray(end)
    if (!keep || bytes.length === 0) return
    if (!sentAny && droppedFirst && bytes.subarray(0, 2).equals(CRLF)) bytes = bytes.subarray(2)
    if (bytes.length === 0) return
    sentAny = true
    out.push(bytes)
  }

  function scan(out: Transform, ending: boolean): void {
    for (;;) {
      if (mode === 'epilogue') {
        send(out, held.length)
        return
      }
      if (mode === 'pass' || mode === 'drop') {
        const at = held.indexOf(delimiter)
        if (at === -1) {
          // Keep what could be the start of a delimiter split across chunks.
          send(out, ending ? held.length : Math.max(0, held.length - (delimiter.length - 1)))
          return
        }
        send(out, at)
        mode = 'headers'
        continue
      }
      // headers: `held` starts with a delimiter.
      if (held.length < delimiter.length + 2) {
        if (ending) mode = 'pass'
        return
      }
      if (held[delimiter.length] === 0x2d && held[delimiter.length + 1] === 0x2d) {
        mode = 'epilogue'
        continue
      }
      const end = held.indexOf(HEADERS_END, delimiter.length)
      if (end === -1) {
        if (held.length <= MAX_HEADER_BYTES && !ending) return
        // Headers that never end (or end past the cap): not a part we can judge; it passes.
        mode = 'pass'
        send(out, delimiter.length)
        continue
      }
      const name = partName(held.toString('latin1', delimiter.length, end))
      const drop = name !== null && names.has(name)
      if (drop && !sentAny) droppedFirst = true
      mode = drop ? 'drop' : 'pass'
      send(out, end + HEADERS_END.length)
    }
  }
}
