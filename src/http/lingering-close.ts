import type { IncomingMessage } from 'node:http'
import { Socket } from 'node:net'

export interface Linger {
  /** Bytes of the body read and dropped, at most, before the connection is cut. */
  maxBytes: number
  /** The connection is cut when the client sends nothing for this long. */
  idleMs: number
}

/** However much the client still sends, the connection is cut this long after the answer (nginx's lingering_time). */
export const LINGER_MAX_MS = 30_000
const LINGERING = Symbol('lingering')

/**
 * A lingering close, as nginx does: an answer that ends a connection whose request body is still
 * coming would have Node destroy the socket as soon as the answer is written (destroySoon), and
 * the bytes the client is still sending would meet a reset that can reach it before it has read
 * the answer (an SDK retries a reset, sending the upload again). Instead only our side is ended,
 * and what the client still sends is read and dropped until its body ends, `maxBytes` more have
 * come, it stalls for `idleMs`, or LINGER_MAX_MS have passed. Call it before the answer is sent;
 * a second call on the same request does nothing.
 */
export function lingerOnClose(request: IncomingMessage, linger: Linger): void {
  const socket = request.socket
  // An injected request (fastify.inject) has a stand-in socket with nothing to linger on.
  if (!(socket instanceof Socket) || request.complete || socket.destroyed) return
  // The first caller's terms hold (the multipart relay's drain, then the error handler).
  const marked = request as IncomingMessage & { [LINGERING]?: true }
  if (marked[LINGERING] === true) return
  marked[LINGERING] = true
  const destroySoon = socket.destroySoon.bind(socket)
  let lingering = true
  let dropped = 0
  const stalled = setTimeout(() => socket.destroy(), linger.idleMs).unref()
  const deadline = setTimeout(() => socket.destroy(), LINGER_MAX_MS).unref()
  const stop = (): void => {
    clearTimeout(stalled)
    clearTimeout(deadline)
  }
  socket.once('close', stop)
  socket.destroySoon = () => (lingering ? socket.end() : destroySoon())
  request.once('end', () => {
    lingering = false
    stop()
    if (socket.writableEnded) destroySoon()
  })
  request.removeAllListeners('data')
  request.on('data', (chunk: Buffer) => {
    stalled.refresh()
    dropped += chunk.length
    if (dropped > linger.maxBytes) socket.destroy()
  })
  request.resume()
}
