import type { FastifyInstance } from 'fastify'

export type ShutdownOutcome = 'drained' | 'forced'

const IDLE_SWEEP_MS = 100

/**
 * Graceful shutdown: readiness fails at once, the listener closes (new connections are refused,
 * requests arriving on open keep-alive connections get 503), in-flight requests (long uploads and
 * streams included) run to their end for up to `graceMs`, then whatever is left is cut, and the
 * upstream pools and Redis close.
 */
export async function shutdown(app: FastifyInstance, graceMs: number): Promise<ShutdownOutcome> {
  app.lifecycle.draining = true
  const closed = app.close()
  // Node closes the connections that are idle when the server closes; those that finish their
  // request afterwards would otherwise sit in keep-alive and hold the close open.
  const idleSweeper = setInterval(() => app.server.closeIdleConnections(), IDLE_SWEEP_MS)
  let timer: NodeJS.Timeout | undefined
  const graceOver = new Promise<'forced'>((resolve) => {
    timer = setTimeout(() => resolve('forced'), graceMs)
  })
  const outcome = await Promise.race([closed.then(() => 'drained' as const), graceOver])
  clearTimeout(timer)
  clearInterval(idleSweeper)
  if (outcome === 'forced') {
    app.server.closeAllConnections()
    await closed
  }
  return outcome
}
