import { createHash } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

/** What the fake upstream received for one request, exactly. */
export interface Received {
  method: string
  url: string
  headers: IncomingHttpHeaders
  chunks: Buffer[]
  /** Bytes received so far (grows while the request streams in). */
  bytes: number
  /** The request body arrived whole ('end' was seen). */
  complete: boolean
  /** The connection closed before the body was whole, or before the answer finished. */
  aborted: boolean
  /** Settles when the request ended one way or the other. */
  done: Promise<void>
  body(): Buffer
  sha256(): string
}

export type Behaviour = (request: IncomingMessage, response: ServerResponse, received: Received) => void | Promise<void>

export interface FakeUpstream {
  url: string
  /** The base URL to put in a provider's config. */
  baseUrl: string
  received: Received[]
  /** Replaces how it answers from now on. */
  behave(behaviour: Behaviour): void
  /** Resolves when the n-th request (1-based) has arrived (headers seen). */
  nthRequest(n: number): Promise<Received>
  close(): Promise<void>
}

export async function readAll(request: IncomingMessage, received: Received): Promise<Buffer> {
  await received.done
  return received.body()
}

/** Answers with JSON once the whole request has arrived. */
export function json(status: number, body: unknown, headers: Record<string, string> = {}): Behaviour {
  return async (request, response, received) => {
    await received.done
    const payload = Buffer.from(JSON.stringify(body))
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': payload.length, ...headers })
    response.end(payload)
  }
}

/** Server-sent events written one at a time, `gapMs` apart. */
export function events(list: { event: string; data: unknown }[], gapMs = 0, headers: Record<string, string> = {}): Behaviour {
  return async (_request, response, received) => {
    await received.done
    response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...headers })
    for (const item of list) {
      response.write(`event: ${item.event}\ndata: ${JSON.stringify(item.data)}\n\n`)
      if (gapMs > 0) await new Promise((resolve) => setTimeout(resolve, gapMs))
    }
    response.end()
  }
}

/** Never answers (the request stays open until the client gives up). */
export const hang: Behaviour = () => undefined

/** Drops the connection once the request has arrived, with no answer. */
export const resetBeforeAnswer: Behaviour = async (request, _response, received) => {
  await received.done
  request.socket.destroy()
}

export async function startFakeUpstream(behaviour: Behaviour = json(200, { created: 1, data: [] })): Promise<FakeUpstream> {
  let current = behaviour
  const received: Received[] = []
  const waiters = new Map<number, (r: Received) => void>()
  const sockets = new Set<Socket>()
  const server = createServer((request, response) => {
    let settle!: () => void
    const record: Received = {
      method: request.method ?? '',
      url: request.url ?? '',
      headers: request.headers,
      chunks: [],
      bytes: 0,
      complete: false,
      aborted: false,
      done: new Promise((resolve) => (settle = resolve)),
      body: () => Buffer.concat(record.chunks),
      sha256: () => createHash('sha256').update(record.body()).digest('hex')
    }
    received.push(record)
    waiters.get(received.length)?.(record)
    request.on('data', (chunk: Buffer) => {
      record.chunks.push(chunk)
      record.bytes += chunk.length
    })
    request.on('end', () => {
      record.complete = true
      settle()
    })
    request.on('error', () => undefined)
    request.on('close', () => {
      if (!record.complete) record.aborted = true
      settle()
    })
    response.on('close', () => {
      if (!response.writableFinished) record.aborted = true
    })
    Promise.resolve(current(request, response, record)).catch(() => response.destroy())
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const url = `http://127.0.0.1:${port}`
  return {
    url,
    baseUrl: `${url}/v1`,
    received,
    behave(next) {
      current = next
    },
    nthRequest(n) {
      const existing = received[n - 1]
      if (existing !== undefined) return Promise.resolve(existing)
      return new Promise((resolve) => waiters.set(n, resolve))
    },
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
