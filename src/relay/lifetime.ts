import type { FastifyReply } from 'fastify'

export class ClientClosedError extends Error {
  constructor() {
    super('the client closed the connection')
    this.name = 'ClientClosedError'
  }
}

/**
 * An abort signal for the upstream call, tied to the client's connection. Fastify's
 * `request.signal` is not used: on POST it fires as soon as the body has been read (Node emits
 * 'close' on the request then), which would cancel every upstream call (fastify#6725).
 */
export function clientLifetime(reply: FastifyReply): AbortController {
  const controller = new AbortController()
  if (clientGone(reply)) {
    controller.abort(new ClientClosedError())
    return controller
  }
  reply.raw.once('close', () => {
    if (reply.raw.writableFinished || controller.signal.aborted) return
    controller.abort(new ClientClosedError())
  })
  return controller
}

/** The client's connection is already closed ('close' has fired, or will never reach a new listener). */
export function clientGone(reply: FastifyReply): boolean {
  return reply.raw.destroyed || reply.raw.socket === null || reply.raw.socket.destroyed
}
