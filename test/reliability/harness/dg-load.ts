import { readFileSync, readdirSync } from 'node:fs'
import { Agent, request as httpRequest, type ClientRequest, type IncomingHttpHeaders } from 'node:http'
import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/*
 * Load and slow-client drivers for the reliability cases of groups D and G (reliability.md
 * section 5): plain node sockets and http requests, so that every byte and every pause is the
 * test's own choice and each answer's latency is measured by the client that waited for it.
 */

/** One answer as its client saw it; status 0 when the exchange failed (reset, aborted). */
export interface Timed {
  status: number
  headers: IncomingHttpHeaders
  body: string
  /** From the request's start to the end of its answer (or its failure). */
  ms: number
  error?: string
}

export interface PostOptions {
  key?: string
  body: Buffer | string
  contentType?: string
  /** A keep-alive agent for load; none (a fresh connection) by default. */
  agent?: Agent | false
  signal?: AbortSignal
  method?: string
}

/** A request sent whole, its answer read whole, never rejecting: failures come back as status 0. */
export function send(url: string, options: PostOptions): Promise<Timed> {
  const started = performance.now()
  const payload = typeof options.body === 'string' ? Buffer.from(options.body) : options.body
  const headers: Record<string, string> = { 'content-type': options.contentType ?? 'application/json', 'content-length': String(payload.length) }
  if (options.key !== undefined) headers.authorization = `Bearer ${options.key}`
  return new Promise((resolve) => {
    const done = (answer: Omit<Timed, 'ms'>): void => resolve({ ...answer, ms: performance.now() - started })
    const request = httpRequest(url, { method: options.method ?? 'POST', headers, agent: options.agent ?? false, signal: options.signal }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('error', (err) => done({ status: 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8'), error: err.message }))
      response.on('end', () => done({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }))
    })
    request.on('error', (err) => done({ status: 0, headers: {}, body: '', error: err.message }))
    request.end(payload)
  })
}

/** GET on a fresh connection, timed. */
export function get(url: string, agent: Agent | false = false): Promise<Timed> {
  const started = performance.now()
  return new Promise((resolve) => {
    const request = httpRequest(url, { method: 'GET', agent }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () =>
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - started })
      )
    })
    request.on('error', (err) => resolve({ status: 0, headers: {}, body: '', ms: performance.now() - started, error: err.message }))
    request.end()
  })
}

/** An upload sent at a chosen pace: its start at once, then `bytesPerTick` every `tickMs`. */
export interface Trickle {
  request: ClientRequest
  /** Settles with the answer (or status 0 when the exchange failed). */
  answer: Promise<Timed>
  /** Bytes written so far. */
  sent(): number
  /** Writes the rest at once and ends the body. */
  finish(): void
  /** Drops the connection, as a client that gives up does. */
  abort(): void
}

export function trickleUpload(
  url: string,
  options: { key: string; body: Buffer; contentType: string; firstBytes: number; bytesPerTick: number; tickMs: number }
): Trickle {
  const started = performance.now()
  const { body } = options
  let offset = 0
  let finishing = false
  const request = httpRequest(url, {
    method: 'POST',
    agent: false,
    headers: { 'content-type': options.contentType, 'content-length': String(body.length), authorization: `Bearer ${options.key}` }
  })
  const answer = new Promise<Timed>((resolve) => {
    const done = (answer: Omit<Timed, 'ms'>): void => resolve({ ...answer, ms: performance.now() - started })
    request.on('response', (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('error', (err) => done({ status: 0, headers: response.headers, body: '', error: err.message }))
      response.on('end', () => done({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }))
    })
    request.on('error', (err) => done({ status: 0, headers: {}, body: '', error: err.message }))
  })
  const write = (bytes: number): void => {
    if (request.destroyed || offset >= body.length) return
    const next = Math.min(body.length, offset + bytes)
    request.write(body.subarray(offset, next))
    offset = next
    if (offset >= body.length) request.end()
  }
  write(options.firstBytes)
  const timer = setInterval(() => {
    if (finishing || request.destroyed || offset >= body.length) clearInterval(timer)
    else write(options.bytesPerTick)
  }, options.tickMs)
  request.once('close', () => clearInterval(timer))
  return {
    request,
    answer,
    sent: () => offset,
    finish() {
      finishing = true
      clearInterval(timer)
      write(body.length)
    },
    abort() {
      clearInterval(timer)
      request.destroy()
    }
  }
}

/** File descriptors this process holds (the gateway, its fake upstream and the test's own clients). */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length
}

/** The kernel's count of connections dropped because a listen queue was full (this network namespace). */
export function listenOverflows(): number {
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n')
  const names = lines.find((l) => l.startsWith('TcpExt:'))?.split(/\s+/) ?? []
  const values = lines.filter((l) => l.startsWith('TcpExt:'))[1]?.split(/\s+/) ?? []
  return Number(values[names.indexOf('ListenOverflows')] ?? 0)
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0
}

/** Latencies of `count` GETs sent one after another, `gapMs` apart. */
export async function probeLatencies(url: string, count: number, gapMs = 5): Promise<{ ms: number[]; statuses: number[] }> {
  const ms: number[] = []
  const statuses: number[] = []
  for (let i = 0; i < count; i++) {
    const answer = await get(url)
    ms.push(answer.ms)
    statuses.push(answer.status)
    if (gapMs > 0) await sleep(gapMs)
  }
  return { ms, statuses }
}

/**
 * An open-model load: `fire` is called `rps` times a second for `seconds`, whatever the answers
 * take (as independent clients arrive), so a slow gateway shows up as growing latency rather than
 * a lower rate. Resolves with every call's result once the last has settled.
 */
export async function steadyRate<T>(rps: number, seconds: number, fire: (index: number) => Promise<T>): Promise<T[]> {
  const started = performance.now()
  const total = Math.round(rps * seconds)
  const pending: Promise<T>[] = []
  while (pending.length < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rps) + 1)
    while (pending.length < due) pending.push(fire(pending.length))
    await sleep(Math.max(1, Math.floor(1000 / rps / 2)))
  }
  return Promise.all(pending)
}

/** A raw TCP connection to `port` that the test writes by hand; `closedAt` settles with ms since it opened. */
export interface RawSocket {
  socket: Socket
  text(): string
  closedAt: Promise<number>
  closed(): boolean
  /** Settles with the ms since it opened once `marker` has arrived (never, if it does not). */
  received(marker: string): Promise<number>
}

export async function openSocket(port: number): Promise<RawSocket> {
  const socket = connect(port, '127.0.0.1')
  const opened = performance.now()
  let text = ''
  let isClosed = false
  const waiters: { marker: string; resolve: (ms: number) => void }[] = []
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1')
    for (const waiter of waiters.filter((w) => text.includes(w.marker))) {
      waiters.splice(waiters.indexOf(waiter), 1)
      waiter.resolve(performance.now() - opened)
    }
  })
  socket.on('error', () => undefined)
  const closedAt = new Promise<number>((resolve) =>
    socket.once('close', () => {
      isClosed = true
      resolve(performance.now() - opened)
    })
  )
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  return {
    socket,
    text: () => text,
    closedAt,
    closed: () => isClosed,
    received: (marker) => (text.includes(marker) ? Promise.resolve(performance.now() - opened) : new Promise((resolve) => waiters.push({ marker, resolve })))
  }
}

/** Status code and body of the first HTTP answer in raw text (0 and '' when none came). */
export function firstAnswer(text: string): { status: number; body: string; head: string } {
  const end = text.indexOf('\r\n\r\n')
  if (end === -1) return { status: 0, body: '', head: text }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), head: text.slice(0, end).toLowerCase(), body: text.slice(end + 4) }
}
