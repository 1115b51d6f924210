/**
 * Learns what an upstream Images answer contained (how many images, the `usage` object, how many
 * partial images) while the body is piped to the client untouched. Answers carry `b64_json`
 * strings of several MB each, so nothing here holds the body: the JSON scanner jumps through
 * string contents with `Buffer.indexOf` (memchr speed) and copies only the bytes of the few
 * top-level values it was asked for, up to a cap. Wire shapes: openai-images-spec.md §6.
 */

export interface TappedUsage {
  /** JSON answers: elements in the top-level `data` array; SSE: number of `*.completed` events. null if never seen. */
  imagesReturned: number | null
  /**
   * The top-level `usage` object (JSON) or the completed event's `usage` (SSE), as parsed JSON;
   * null if none. With several completed events (n > 1) their numeric fields are summed.
   */
  usage: unknown
  /** Partial image events seen (SSE), for pricing partials. */
  partialImages: number
}

export const DEFAULT_MAX_CAPTURED_BYTES = 64 * 1024

const TAB = 0x09
const LF = 0x0a
const CR = 0x0d
const SPACE = 0x20
const QUOTE = 0x22
const COMMA = 0x2c
const COLON = 0x3a
const LBRACKET = 0x5b
const BACKSLASH = 0x5c
const RBRACKET = 0x5d
const LBRACE = 0x7b
const RBRACE = 0x7d

/** Where the scanner is within a member of the top-level object. */
const EXPECT_KEY = 0
const EXPECT_COLON = 1
const EXPECT_VALUE = 2
const AFTER_VALUE = 3

/** How a captured top-level value ends: its closing quote, its closing bracket, or the next delimiter. */
const CAPTURE_STRING = 0
const CAPTURE_CONTAINER = 1
const CAPTURE_SCALAR = 2

/** The keys we look for are a few ASCII letters; anything longer cannot be one of them. */
const MAX_KEY_BYTES = 256

function isScalarByte(b: number): boolean {
  return !(
    b === SPACE || b === TAB || b === LF || b === CR || b === QUOTE || b === COMMA || b === COLON ||
    b === LBRACKET || b === RBRACKET || b === LBRACE || b === RBRACE
  )
}

/**
 * A streaming scanner for one JSON document that only tracks nesting depth and the members of the
 * top-level object. It does not validate: on malformed input it keeps whatever it had learnt,
 * and anything that is not an object at the top level teaches it nothing.
 */
class TopLevelJsonScanner {
  private readonly captureKeys: ReadonlySet<string>
  private readonly countKey: string | null
  private readonly maxCapturedBytes: number

  private stopped = false
  private depth = 0
  private member = EXPECT_KEY
  private currentKey: string | null = null

  private inString = false
  private stringIsKey = false
  /** True when the byte at the start of the next chunk is escaped (the chunk ended in an odd run of `\`). */
  private escapeCarry = false
  private inScalar = false

  private keyParts: Buffer[] = []
  private keyBytes = 0

  private captureKey: string | null = null
  private captureKind = CAPTURE_STRING
  private captureParts: Buffer[] = []
  private captureBytes = 0
  private captureOverflow = false
  /** Where the capture resumes within the chunk being scanned. */
  private captureFrom = 0

  /** Raw bytes of each finished capture; null when it went over the cap. */
  private readonly captured = new Map<string, Buffer | null>()
  private readonly parsed = new Map<string, unknown>()

  private countingArray = false
  private elementOpen = false
  private elements: number | null = null

  constructor(captureKeys: readonly string[], countKey: string | null, maxCapturedBytes: number) {
    this.captureKeys = new Set(captureKeys)
    this.countKey = countKey
    this.maxCapturedBytes = maxCapturedBytes
  }

  write(chunk: Uint8Array): void {
    if (this.stopped) return
    const n = chunk.length
    this.captureFrom = 0
    let i = 0
    while (i < n && !this.stopped) {
      if (this.inString) {
        i = this.skipString(chunk, i)
        continue
      }
      const b = chunk[i] as number
      if (this.inScalar) {
        if (isScalarByte(b)) {
          i++
          continue
        }
        this.endScalar(chunk, i)
      }
      if (this.depth === 0) {
        if (b === SPACE || b === TAB || b === LF || b === CR) {
          i++
          continue
        }
        // Only an object has the members we look for (closing it stops the scan, so this is its start).
        if (b !== LBRACE) {
          this.stopped = true
          break
        }
        this.depth = 1
        this.member = EXPECT_KEY
        i++
        continue
      }
      switch (b) {
        case SPACE:
        case TAB:
        case LF:
        case CR:
          break
        case QUOTE:
          this.openString(i)
          break
        case LBRACE:
        case LBRACKET:
          this.openContainer(b, i)
          break
        case RBRACE:
        case RBRACKET:
          this.closeContainer(chunk, i)
          break
        case COMMA:
          this.comma()
          break
        case COLON:
          if (this.depth === 1 && this.member === EXPECT_COLON) this.member = EXPECT_VALUE
          break
        default:
          this.openScalar(i)
      }
      i++
    }
    if (this.captureKey !== null) this.appendCapture(chunk, this.captureFrom, n)
  }

  /** Elements of the top-level array named by `countKey` (so far); null if there was none. */
  count(): number | null {
    return this.elements
  }

  /** The parsed value of a captured top-level member: undefined if not (fully) seen, null if over the cap or unparsable. */
  value(key: string): unknown {
    if (this.parsed.has(key)) return this.parsed.get(key)
    const raw = this.captured.get(key)
    if (raw === undefined) return undefined
    let parsed: unknown = null
    if (raw !== null) {
      try {
        parsed = JSON.parse(raw.toString('utf8')) as unknown
      } catch {
        parsed = null
      }
    }
    this.parsed.set(key, parsed)
    return parsed
  }

  /**
   * Jumps to the next `"` and looks back over the `\` run before it: an odd run escapes the
   * quote. Inspecting every byte instead would cost far more than the memchr inside indexOf on
   * multi-MB base64 strings.
   */
  private skipString(chunk: Uint8Array, start: number): number {
    let from = start
    let carry = this.escapeCarry
    for (;;) {
      const q = chunk.indexOf(QUOTE, from)
      const end = q === -1 ? chunk.length : q
      let k = end - 1
      while (k >= from && chunk[k] === BACKSLASH) k--
      let escaped = ((end - 1 - k) & 1) === 1
      // The run may continue from the previous chunk, whose parity we carried over.
      if (k < from && carry) escaped = !escaped
      carry = false
      if (q === -1) {
        if (this.stringIsKey) this.appendKey(chunk, start, end)
        this.escapeCarry = escaped
        return end
      }
      if (escaped) {
        from = q + 1
        continue
      }
      this.escapeCarry = false
      this.inString = false
      if (this.stringIsKey) {
        this.appendKey(chunk, start, q)
        this.finishKey()
      } else if (this.captureKey !== null && this.captureKind === CAPTURE_STRING) {
        this.finishCapture(chunk, q + 1)
      }
      return q + 1
    }
  }

  private openString(i: number): void {
    if (this.depth === 1) {
      if (this.member === EXPECT_KEY) {
        this.stringIsKey = true
        this.keyParts = []
        this.keyBytes = 0
      } else if (this.member === EXPECT_VALUE) {
        this.startValue(i, CAPTURE_STRING)
      }
    } else if (this.depth === 2 && this.countingArray) {
      this.startElement()
    }
    this.inString = true
    this.escapeCarry = false
  }

  private openContainer(b: number, i: number): void {
    if (this.depth === 1) {
      if (this.member === EXPECT_VALUE) {
        const counted = b === LBRACKET && this.currentKey !== null && this.currentKey === this.countKey
        this.startValue(i, CAPTURE_CONTAINER)
        if (counted) {
          this.countingArray = true
          this.elementOpen = false
          this.elements = 0
        }
      }
    } else if (this.depth === 2 && this.countingArray) {
      this.startElement()
    }
    this.depth++
  }

  private closeContainer(chunk: Uint8Array, i: number): void {
    this.depth--
    if (this.depth === 1) {
      this.countingArray = false
      if (this.captureKey !== null && this.captureKind === CAPTURE_CONTAINER) this.finishCapture(chunk, i + 1)
    } else if (this.depth <= 0) {
      this.stopped = true
    }
  }

  private comma(): void {
    if (this.depth === 1) {
      this.member = EXPECT_KEY
      this.currentKey = null
    } else if (this.depth === 2 && this.countingArray) {
      this.elementOpen = false
    }
  }

  private openScalar(i: number): void {
    this.inScalar = true
    if (this.depth === 1) {
      if (this.member === EXPECT_VALUE) this.startValue(i, CAPTURE_SCALAR)
    } else if (this.depth === 2 && this.countingArray) {
      this.startElement()
    }
  }

  private endScalar(chunk: Uint8Array, i: number): void {
    this.inScalar = false
    if (this.captureKey !== null && this.captureKind === CAPTURE_SCALAR) this.finishCapture(chunk, i)
  }

  private startElement(): void {
    if (this.elementOpen) return
    this.elementOpen = true
    this.elements = (this.elements ?? 0) + 1
  }

  private startValue(i: number, kind: number): void {
    this.member = AFTER_VALUE
    const key = this.currentKey
    if (key === null) return
    // A repeated key replaces the earlier value, as JSON.parse does.
    if (key === this.countKey) {
      this.elements = null
      this.countingArray = false
    }
    if (!this.captureKeys.has(key)) return
    this.captured.delete(key)
    this.parsed.delete(key)
    this.captureKey = key
    this.captureKind = kind
    this.captureParts = []
    this.captureBytes = 0
    this.captureOverflow = false
    this.captureFrom = i
  }

  private appendCapture(chunk: Uint8Array, from: number, to: number): void {
    if (this.captureOverflow || to <= from) return
    const length = to - from
    if (this.captureBytes + length > this.maxCapturedBytes) {
      this.captureOverflow = true
      this.captureParts = []
      return
    }
    // Copied: the caller may reuse or release its chunk once push returns.
    this.captureParts.push(Buffer.from(chunk.subarray(from, to)))
    this.captureBytes += length
  }

  private finishCapture(chunk: Uint8Array, end: number): void {
    const key = this.captureKey
    if (key === null) return
    this.appendCapture(chunk, this.captureFrom, end)
    this.captured.set(key, this.captureOverflow ? null : Buffer.concat(this.captureParts))
    this.captureKey = null
    this.captureParts = []
  }

  private appendKey(chunk: Uint8Array, from: number, to: number): void {
    const length = to - from
    if (length <= 0) return
    this.keyBytes += length
    if (this.keyBytes > MAX_KEY_BYTES) {
      this.keyParts = []
      return
    }
    this.keyParts.push(Buffer.from(chunk.subarray(from, to)))
  }

  private finishKey(): void {
    this.stringIsKey = false
    this.member = EXPECT_COLON
    this.currentKey = null
    if (this.keyBytes > MAX_KEY_BYTES) return
    const raw = Buffer.concat(this.keyParts)
    this.keyParts = []
    if (!raw.includes(BACKSLASH)) {
      this.currentKey = raw.toString('utf8')
      return
    }
    // `"us\u0061ge"` is the key `usage` too.
    try {
      const decoded = JSON.parse(`"${raw.toString('utf8')}"`) as unknown
      if (typeof decoded === 'string') this.currentKey = decoded
    } catch {
      // Not a valid JSON string: no key of ours.
    }
  }
}

const PARTIAL_EVENTS: ReadonlySet<string> = new Set(['image_generation.partial_image', 'image_edit.partial_image'])
const COMPLETED_EVENTS: ReadonlySet<string> = new Set(['image_generation.completed', 'image_edit.completed'])
const KNOWN_EVENTS: ReadonlySet<string> = new Set([...PARTIAL_EVENTS, ...COMPLETED_EVENTS, 'error'])

/** Field names we act on are `data` and `event`; a longer name is some other field. */
const MAX_FIELD_NAME_BYTES = 16
/** Event names are short; this bounds what a hostile stream can make us hold. */
const MAX_EVENT_NAME_BYTES = 256

const FIELD_NAME = 0
const FIELD_DATA = 1
const FIELD_EVENT = 2
const FIELD_IGNORED = 3

const NEWLINE = Buffer.from('\n')

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** n > 1 streams bill every completed image: numbers add up, nested details too; the later value wins elsewhere. */
function sumUsage(a: unknown, b: unknown): unknown {
  if (typeof a === 'number' && typeof b === 'number') return a + b
  if (!isPlainObject(a) || !isPlainObject(b)) return b
  const keys = new Set([...Object.keys(a), ...Object.keys(b)])
  // fromEntries defines own properties, so a `__proto__` key from the wire stays plain data.
  return Object.fromEntries(
    [...keys].map((key) => {
      const inA = Object.hasOwn(a, key)
      const inB = Object.hasOwn(b, key)
      return [key, inA && inB ? sumUsage(a[key], b[key]) : inB ? b[key] : a[key]]
    })
  )
}

/**
 * An SSE decoder (the WHATWG event-stream rules the OpenAI SDKs follow: LF, CRLF or CR line ends,
 * `:` comments, one space stripped after the colon, `data` lines joined with `\n`, an event
 * dispatched at a blank line). `data` bytes are streamed into a per-event JSON scanner as they
 * arrive, so a partial image's multi-MB line is never held.
 */
class EventStreamTap {
  private readonly maxCapturedBytes: number

  private lineStarted = false
  private field = FIELD_NAME
  private nameParts: Buffer[] = []
  private nameBytes = 0
  /** The single space after `field:` is not part of the value, and may arrive in the next chunk. */
  private stripSpace = false
  /** A CR ended the last line; an LF right after it belongs to that line end. */
  private skipLF = false

  private dataLines = 0
  private scanner: TopLevelJsonScanner | null = null
  private eventParts: Buffer[] = []
  private eventBytes = 0

  private partials = 0
  private completed = 0
  private usage: unknown = null

  constructor(maxCapturedBytes: number) {
    this.maxCapturedBytes = maxCapturedBytes
  }

  push(chunk: Uint8Array): void {
    const n = chunk.length
    let i = 0
    while (i < n) {
      if (this.skipLF) {
        this.skipLF = false
        if (chunk[i] === LF) {
          i++
          continue
        }
      }
      const lf = chunk.indexOf(LF, i)
      const limit = lf === -1 ? n : lf
      // Bounded by the LF so a CR-free chunk is searched once, not once per line.
      const cr = chunk.subarray(i, limit).indexOf(CR)
      const end = cr === -1 ? limit : i + cr
      if (end > i) this.lineBytes(chunk, i, end)
      if (end === n) return
      this.endLine()
      if (chunk[end] === CR) this.skipLF = true
      i = end + 1
    }
  }

  result(): TappedUsage {
    return {
      imagesReturned: this.completed > 0 ? this.completed : null,
      usage: this.usage,
      partialImages: this.partials
    }
  }

  private lineBytes(chunk: Uint8Array, start: number, end: number): void {
    this.lineStarted = true
    let from = start
    if (this.field === FIELD_NAME) {
      const colon = chunk.subarray(from, end).indexOf(COLON)
      const nameEnd = colon === -1 ? end : from + colon
      this.appendName(chunk, from, nameEnd)
      if (colon === -1) return
      this.beginValue()
      from = nameEnd + 1
    }
    if (from < end && this.stripSpace) {
      this.stripSpace = false
      if (chunk[from] === SPACE) from++
    }
    if (from >= end) return
    if (this.field === FIELD_DATA) {
      this.scanner?.write(chunk.subarray(from, end))
    } else if (this.field === FIELD_EVENT) {
      const length = end - from
      this.eventBytes += length
      if (this.eventBytes <= MAX_EVENT_NAME_BYTES) this.eventParts.push(Buffer.from(chunk.subarray(from, end)))
    }
  }

  private appendName(chunk: Uint8Array, from: number, to: number): void {
    const length = to - from
    if (length <= 0) return
    this.nameBytes += length
    if (this.nameBytes <= MAX_FIELD_NAME_BYTES) this.nameParts.push(Buffer.from(chunk.subarray(from, to)))
  }

  private beginValue(): void {
    this.stripSpace = true
    const name = this.nameBytes <= MAX_FIELD_NAME_BYTES ? Buffer.concat(this.nameParts).toString('latin1') : null
    this.nameParts = []
    if (name === 'data') {
      this.field = FIELD_DATA
      this.scanner ??= new TopLevelJsonScanner(['type', 'usage'], null, this.maxCapturedBytes)
      if (this.dataLines > 0) this.scanner.write(NEWLINE)
      this.dataLines++
    } else if (name === 'event') {
      this.field = FIELD_EVENT
      this.eventParts = []
      this.eventBytes = 0
    } else {
      // Comments (empty name), `id`, `retry` and unknown fields carry nothing we bill on.
      this.field = FIELD_IGNORED
    }
  }

  private endLine(): void {
    if (!this.lineStarted) {
      this.dispatch()
      return
    }
    // A line without a colon is a field name with an empty value (`data` alone is an empty data line).
    if (this.field === FIELD_NAME) this.beginValue()
    this.lineStarted = false
    this.field = FIELD_NAME
    this.nameParts = []
    this.nameBytes = 0
    this.stripSpace = false
  }

  private dispatch(): void {
    const scanner = this.scanner
    if (this.dataLines > 0 && scanner !== null) {
      const name = this.eventBytes <= MAX_EVENT_NAME_BYTES ? Buffer.concat(this.eventParts).toString('utf8') : ''
      const type = scanner.value('type')
      const kind = KNOWN_EVENTS.has(name) ? name : typeof type === 'string' ? type : name
      if (PARTIAL_EVENTS.has(kind)) {
        this.partials++
      } else if (COMPLETED_EVENTS.has(kind)) {
        this.completed++
        const usage = scanner.value('usage')
        if (usage !== undefined && usage !== null) {
          this.usage = this.usage === null ? usage : sumUsage(this.usage, usage)
        }
      }
    }
    this.dataLines = 0
    this.scanner = null
    this.eventParts = []
    this.eventBytes = 0
  }
}

export class UsageTap {
  private readonly json: TopLevelJsonScanner | null
  private readonly events: EventStreamTap | null
  private broken = false

  constructor(kind: 'json' | 'event-stream', maxCapturedBytes: number = DEFAULT_MAX_CAPTURED_BYTES) {
    if (!Number.isSafeInteger(maxCapturedBytes) || maxCapturedBytes < 0) {
      throw new RangeError(`maxCapturedBytes must be a non-negative integer, got ${String(maxCapturedBytes)}`)
    }
    if (kind === 'json') {
      this.json = new TopLevelJsonScanner(['usage'], 'data', maxCapturedBytes)
      this.events = null
    } else {
      this.json = null
      this.events = new EventStreamTap(maxCapturedBytes)
    }
  }

  push(chunk: Buffer): void {
    if (this.broken) return
    try {
      if (this.json !== null) this.json.write(chunk)
      else this.events?.push(chunk)
    } catch {
      // The tap rides on the client's pipe: a bug here must cost the bill's detail, never the answer.
      this.broken = true
    }
  }

  result(): TappedUsage {
    if (this.events !== null) return this.events.result()
    const usage = this.json?.value('usage')
    return {
      imagesReturned: this.json?.count() ?? null,
      usage: usage ?? null,
      partialImages: 0
    }
  }
}
