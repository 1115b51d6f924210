import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { gzipSync } from 'node:zlib'
import type { Behaviour } from '../../helpers/fake-upstream.js'

/*
 * The fault-injecting upstream of reliability.md section 5: each export is one way an upstream
 * misbehaves, as a Behaviour for test/helpers/fake-upstream.ts (a real HTTP server on port 0 that
 * records every request's headers, bytes, and whether its body arrived whole or was cut off).
 */

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Answers 200 with these headers, writes `firstBytes` of the body, then never sends another byte. */
export function hangMidBody(firstBytes = '{"created":1,"data":[{"b64_json":"'): Behaviour {
  return async (_request, response, received) => {
    await received.done
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(firstBytes.length + 1_000_000) })
    response.write(firstBytes)
  }
}

/** Sends a TCP RST (not a FIN) once `afterBytes` of the request body have arrived; 0: before reading any. */
export function resetAfterBytes(afterBytes: number): Behaviour {
  return (request, _response, received) => {
    const check = (): void => {
      if (received.bytes >= afterBytes) {
        request.off('data', check)
        request.socket.resetAndDestroy()
      }
    }
    if (afterBytes === 0) request.socket.resetAndDestroy()
    else request.on('data', check)
  }
}

/** Reads the whole body, then resets the connection with no answer (the billable case). */
export const resetAfterBody: Behaviour = async (request, _response, received) => {
  await received.done
  request.socket.resetAndDestroy()
}

/** A 200 JSON answer written `chunkBytes` at a time, `gapMs` apart. */
export function slowDrip(body: Buffer, chunkBytes: number, gapMs: number): Behaviour {
  return async (_request, response, received) => {
    await received.done
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length) })
    for (let at = 0; at < body.length && !response.destroyed; at += chunkBytes) {
      response.write(body.subarray(at, at + chunkBytes))
      await sleep(gapMs)
    }
    response.end()
  }
}

/** An OpenAI-shaped error answer with a status and extra headers (retry-after and the like). */
export function failWith(status: number, headers: Record<string, string> = {}, message = 'upstream says no'): Behaviour {
  return async (_request, response, received) => {
    await received.done
    const body = JSON.stringify({ error: { message, type: 'server_error', param: null, code: null } })
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers })
    response.end(body)
  }
}

/** Any status with a raw body and content type (an HTML 502 page from a load balancer, broken JSON). */
export function rawAnswer(status: number, contentType: string, body: string | Buffer, headers: Record<string, string> = {}): Behaviour {
  return async (_request, response, received) => {
    await received.done
    const bytes = typeof body === 'string' ? Buffer.from(body) : body
    response.writeHead(status, { 'content-type': contentType, 'content-length': String(bytes.length), ...headers })
    response.end(bytes)
  }
}

export const htmlBadGateway: Behaviour = rawAnswer(502, 'text/html', '<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>')
export const invalidJson: Behaviour = rawAnswer(200, 'application/json', '{"created":1,"data":[{"url":')

/** A 200 JSON answer of `bytes` bytes (chunked, written as fast as the gateway reads). */
export function giantBody(bytes: number): Behaviour {
  return async (_request, response, received) => {
    await received.done
    response.writeHead(200, { 'content-type': 'application/json' })
    const prefix = Buffer.from('{"created":1,"data":[{"b64_json":"')
    response.write(prefix)
    const block = Buffer.alloc(64 * 1024, 0x41)
    let sent = prefix.length
    while (sent < bytes && !response.destroyed) {
      const ok = response.write(block)
      sent += block.length
      if (!ok) await new Promise((resolve) => response.once('drain', resolve).once('close', resolve))
    }
    response.end('"}]}')
  }
}

/** A small gzip body that inflates to `inflatedBytes` of zeros, labelled with `encoding`. */
export function compressedBomb(inflatedBytes: number, encoding = 'gzip'): Behaviour {
  const bomb = gzipSync(Buffer.alloc(inflatedBytes), { level: 9 })
  return rawAnswer(200, 'application/json', bomb, { 'content-encoding': encoding })
}

/** A redirect to where no gateway should go (cloud metadata by default). */
export function redirectTo(location = 'http://169.254.169.254/latest/meta-data/', status = 302): Behaviour {
  return async (_request, response, received) => {
    await received.done
    response.writeHead(status, { location, 'content-length': '0' })
    response.end()
  }
}

/** A raw TCP listener: `mode` says what it does with each connection. */
export interface RawListener {
  port: number
  /** http://127.0.0.1:port/v1 */
  baseUrl: string
  /** Connections accepted so far. */
  connections: number
  close(): Promise<void>
}

/**
 * - `close`: accepts, then closes at once (FIN) before reading anything: accept-then-close.
 * - `silent`: accepts and never reads or answers (TCP is up; no HTTP ever comes back).
 */
export async function startRawListener(mode: 'close' | 'silent'): Promise<RawListener> {
  const sockets = new Set<Socket>()
  const server: Server = createServer({ pauseOnConnect: mode === 'silent' }, (socket) => {
    state.connections += 1
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => undefined)
    if (mode === 'close') socket.end()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const state: RawListener = {
    port,
    baseUrl: `http://127.0.0.1:${port}/v1`,
    connections: 0,
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  return state
}

/** A port nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}
