import { readFileSync, writeFileSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { connect, type Socket } from 'node:net'
import type { Behaviour, Received } from '../../helpers/fake-upstream.js'
import type { Gateway } from '../../helpers/gateway.js'
import { makePng } from '../../helpers/images.js'
import { rssAfterGcMb } from './invariants.js'
import { parseResponse } from './raw-socket.js'

/*
 * Tools for the body-size and upload-lifecycle cases (reliability.md section 5, group C): uploads
 * of tens of MB generated piece by piece (so the test process does not hold them), a raw client
 * that keeps pushing while it reads the answer, the gateway's own sockets (to count what it read),
 * when each upstream request was cut off, and the process's peak memory.
 */

export const MiB = 1024 * 1024

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Wraps how the fake upstream answers, and notes when each request's connection closed (the moment
 * an aborted upload reaches the upstream). With `tailOnly`, only the last chunks of each body are
 * kept: enough to look for the closing delimiter, while tens of MB pass through without the
 * recorder holding them (so memory measures the gateway, not the test's upstream).
 */
export class UpstreamWatch {
  readonly closedAt = new Map<Received, number>()
  answer: Behaviour
  private readonly tailOnly: boolean

  constructor(answer: Behaviour, options: { tailOnly?: boolean } = {}) {
    this.answer = answer
    this.tailOnly = options.tailOnly ?? false
  }

  readonly behaviour: Behaviour = (request, response, received) => {
    response.once('close', () => this.closedAt.set(received, Date.now()))
    if (this.tailOnly) {
      request.on('data', () => {
        if (received.chunks.length > 2) received.chunks.splice(0, received.chunks.length - 2)
      })
    }
    return this.answer(request, response, received)
  }
}

/** Whether the upstream saw the form's closing delimiter (it had a whole form). */
export function sawClosingDelimiter(received: Received, boundary: string): boolean {
  return received.body().includes(Buffer.from(`--${boundary}--`))
}

/** An upload described, not held: its pieces are generated as they are sent. */
export interface StreamedForm {
  contentType: string
  boundary: string
  /** Bytes of the whole body. */
  length: number
  pieces(): Generator<Buffer>
}

export interface FormSpec {
  /** Text fields before the file, in order. */
  before?: [string, string][]
  /** Small files before the big one: [field, bytes], each named after its field. */
  smallFiles?: [string, Buffer][]
  /** Text fields after the file. */
  after?: [string, string][]
  /** The file part's field name (image, mask). */
  field?: string
  /** The file's size: a small real PNG, then filler bytes. */
  fileBytes: number
  boundary?: string
}

const FILLER = Buffer.alloc(MiB, 0x5a)
const SMALL_PNG = makePng({ width: 16, height: 16, seed: 3 })

function textParts(boundary: string, fields: [string, string][]): string {
  return fields.map(([name, value]) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`).join('')
}

/** A multipart form with one file of `fileBytes`, generated in pieces of at most 1 MiB. */
export function streamedForm(spec: FormSpec): StreamedForm {
  const boundary = spec.boundary ?? 'c-boundary-5e1d'
  const field = spec.field ?? 'image'
  if (spec.fileBytes < SMALL_PNG.length) throw new RangeError(`fileBytes must be at least ${SMALL_PNG.length}`)
  const fileHead = (name: string, filename: string): Buffer =>
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${filename}"\r\nContent-Type: image/png\r\n\r\n`)
  const head = Buffer.concat([
    Buffer.from(textParts(boundary, spec.before ?? [])),
    ...(spec.smallFiles ?? []).flatMap(([name, data]) => [fileHead(name, `${name}.png`), data, Buffer.from('\r\n')]),
    fileHead(field, 'big.png')
  ])
  const tail = Buffer.from(`\r\n${textParts(boundary, spec.after ?? [])}--${boundary}--\r\n`)
  const fillerBytes = spec.fileBytes - SMALL_PNG.length
  return {
    contentType: `multipart/form-data; boundary=${boundary}`,
    boundary,
    length: head.length + spec.fileBytes + tail.length,
    *pieces() {
      yield Buffer.concat([head, SMALL_PNG])
      for (let left = fillerBytes; left > 0; left -= FILLER.length) yield FILLER.subarray(0, Math.min(left, FILLER.length))
      yield tail
    }
  }
}

/** The first `bytes` of a stream of pieces (the pieces are views, not copies). */
export function* firstBytes(pieces: Iterable<Buffer>, bytes: number): Generator<Buffer> {
  let left = bytes
  for (const piece of pieces) {
    if (left <= 0) return
    yield piece.length <= left ? piece : piece.subarray(0, left)
    left -= piece.length
  }
}

/** Extra filler bytes after a form's pieces (a body that goes on past where the cap is). */
export function* withFiller(pieces: Iterable<Buffer>, extraBytes: number): Generator<Buffer> {
  yield* pieces
  for (let left = extraBytes; left > 0; left -= FILLER.length) yield FILLER.subarray(0, Math.min(left, FILLER.length))
}

/** What came back to a client that kept pushing its body while it read the answer. */
export interface PushResult {
  status: number
  headers: Record<string, string>
  body: string
  /** Body bytes the client had handed to its socket when the first byte of the answer came. */
  sentWhenAnswered: number | null
  /** Body bytes the client handed to its socket in all. */
  sent: number
  /** The server closed the connection (FIN or reset). */
  closed: boolean
  /** The client's socket error (EPIPE, ECONNRESET), if any. */
  error: string | null
}

export interface PushOptions {
  /** Header lines after the request line, without the blank line. */
  headers: Record<string, string>
  path: string
  /** Frame the body as chunked transfer coding (no Content-Length is added by this function). */
  chunked?: boolean
  /** How long to wait for the server after the last byte (or after the server stopped taking them). */
  waitMs?: number
  /**
   * As curl does with `Expect: 100-continue`: wait (up to 1 s) for the server's word before the
   * body, and send none if its final answer comes first.
   */
  expectContinue?: boolean
  /**
   * Keep sending after the server has ended its side (TCP half-open), as a client that does not
   * watch its socket's read side would; by default the client stops when the server's FIN comes.
   */
  halfOpen?: boolean
}

/**
 * A raw HTTP/1.1 client that writes the request as fast as the server takes it and reads the
 * answer at the same time, as curl does; it stops writing when the server closes. Measures how
 * much of the body it could push, and when the answer came.
 */
export async function pushUpload(port: number, body: Iterable<Buffer>, options: PushOptions): Promise<PushResult> {
  const socket: Socket = connect({ port, host: '127.0.0.1', allowHalfOpen: options.halfOpen === true })
  let error: string | null = null
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error = err.code ?? err.message
  })
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  const chunks: Buffer[] = []
  let sent = 0
  let sentWhenAnswered: number | null = null
  let closed = false
  const closedPromise = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closed = true
      resolve()
    })
  )
  socket.on('data', (chunk: Buffer) => {
    sentWhenAnswered ??= sent
    chunks.push(chunk)
  })
  const head = [
    `POST ${options.path} HTTP/1.1`,
    'Host: gateway.test',
    ...Object.entries(options.headers).map(([k, v]) => `${k}: ${v}`),
    ...(options.expectContinue === true ? ['Expect: 100-continue'] : [])
  ]
  socket.write(`${head.join('\r\n')}\r\n\r\n`)
  if (options.expectContinue === true) {
    const deadline = Date.now() + 1000
    while (chunks.length === 0 && !closed && Date.now() < deadline) await sleep(5)
    if (chunks.length > 0 && !/^HTTP\/1\.1 100 /.test(Buffer.concat(chunks).toString('latin1'))) body = []
  }
  const writable = (): boolean => !closed && !socket.destroyed && socket.writable
  for (const piece of body) {
    if (!writable()) break
    const framed = options.chunked === true ? [Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')] : [piece]
    let room = true
    for (const part of framed) room = socket.write(part)
    sent += piece.length
    if (!room) await Promise.race([new Promise((resolve) => socket.once('drain', resolve)), closedPromise])
  }
  if (writable() && options.chunked === true) socket.write('0\r\n\r\n')
  const waitMs = options.waitMs ?? 3000
  const deadline = Date.now() + waitMs
  while (!closed && Date.now() < deadline && !answerComplete(Buffer.concat(chunks))) await sleep(10)
  socket.destroy()
  return { ...parseAnswer(Buffer.concat(chunks)), sentWhenAnswered, sent, closed, error }
}

function answerComplete(bytes: Buffer): boolean {
  const text = bytes.toString('latin1')
  const end = text.indexOf('\r\n\r\n')
  if (end === -1) return false
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, end))
  return length !== null && bytes.length - (end + 4) >= Number(length[1])
}

function parseAnswer(bytes: Buffer): { status: number; headers: Record<string, string>; body: string } {
  let text = bytes.toString('utf8')
  // A 100 Continue comes before the real answer.
  while (/^HTTP\/1\.1 100 /.test(text)) text = text.slice(text.indexOf('\r\n\r\n') + 4)
  return parseResponse(text)
}

/** The gateway's side of every connection accepted from now on, to count what it read. */
export function acceptedSockets(gateway: Gateway): Socket[] {
  const sockets: Socket[] = []
  gateway.app.server.on('connection', (socket: Socket) => sockets.push(socket))
  return sockets
}

/** Bytes the gateway read from these connections (request lines and headers included). */
export function bytesRead(sockets: Socket[]): number {
  return sockets.reduce((sum, socket) => sum + socket.bytesRead, 0)
}

/**
 * Starts a new peak-RSS window: the kernel's high-water mark (VmHWM) is reset to the current RSS
 * (`/proc/self/clear_refs`, "5"); returns false where that is not allowed.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5')
    return true
  } catch {
    return false
  }
}

/** The process's peak RSS (VmHWM) in MiB since the last reset. */
export function peakRssMb(): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))
  return match === null ? Number.NaN : Number(match[1]) / 1024
}

/** Polls an asynchronous check until it holds or the time is up. */
export async function eventuallyAsync(check: () => Promise<boolean>, timeoutMs = 3000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(10)
  }
  return check()
}

/** One client's outcome in a crowd of uploads. */
export interface UploadOutcome {
  status: number
  headers: IncomingHttpHeaders
  body: string
  /** The client's error when no answer came (a reset, say). */
  error: string | null
  ms: number
}

/**
 * Sends the form `count` times at once, each on its own connection with a Content-Length, writing
 * with backpressure (the pieces are views of shared buffers, so the clients hold next to nothing).
 * Each client sends its headers and first piece, then waits for `gate` before the rest: under load
 * Node accepts connections one event-loop turn at a time, so without a gate the crowd would reach
 * the gateway spread over seconds, never all at once. A client stops writing when its answer comes
 * first (a refusal).
 */
export async function uploadMany(
  url: string,
  key: string,
  form: StreamedForm,
  count: number,
  gate: Promise<void> = Promise.resolve(),
  deadlineMs = 120_000
): Promise<UploadOutcome[]> {
  const one = (index: number): Promise<UploadOutcome> =>
    new Promise((resolve) => {
      const started = Date.now()
      let answered = false
      // A client that never hears back is a finding, not a hung test.
      const deadline = setTimeout(() => {
        resolve({ status: 0, headers: {}, body: '', error: `no answer within ${deadlineMs} ms`, ms: Date.now() - started })
        req.destroy()
      }, deadlineMs)
      const req = httpRequest(
        url,
        {
          method: 'POST',
          agent: false,
          headers: {
            authorization: `Bearer ${key}`,
            'content-type': form.contentType,
            'content-length': String(form.length),
            'x-request-id': `crowd-${index}`
          }
        },
        (res) => {
          answered = true
          const chunks: Buffer[] = []
          res.on('data', (chunk: Buffer) => chunks.push(chunk))
          res.on('error', () => undefined)
          res.on('close', () => {
            clearTimeout(deadline)
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), error: null, ms: Date.now() - started })
          })
        }
      )
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(deadline)
        if (!answered) resolve({ status: 0, headers: {}, body: '', error: err.code ?? err.message, ms: Date.now() - started })
      })
      void (async () => {
        let first = true
        for (const piece of form.pieces()) {
          if (answered || req.destroyed) return
          const room = req.write(piece)
          if (first) {
            first = false
            await gate
          } else if (!room) await new Promise((r) => req.once('drain', r).once('close', r))
        }
        if (!req.destroyed) req.end()
      })()
    })
  return Promise.all(Array.from({ length: count }, (_, index) => one(index)))
}

/**
 * RSS after GC, polled until it is at most `boundMb` or `timeoutMs` passed: V8 frees the memory
 * behind dead Buffers on a background thread after a collection, so the first reading after a
 * burst of traffic can still count memory that is already garbage.
 */
export async function settledRssMb(boundMb: number, timeoutMs = 5000): Promise<number> {
  const deadline = Date.now() + timeoutMs
  let rss = rssAfterGcMb()
  while (rss > boundMb && Date.now() < deadline) {
    await sleep(250)
    rss = rssAfterGcMb()
  }
  return rss
}
