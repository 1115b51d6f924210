import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from './errors/catalogue.js'
import { safeError } from './errors/safe-error.js'

export type ShutdownOutcome = 'drained' | 'forced'

const IDLE_SWEEP_MS = 100
/** The longest drain after an uncaught exception: the process may be in a state nobody planned for. */
export const FATAL_GRACE_MS = 10_000
/** How long past the grace period closing may take (a store that never answers its quit) before the process exits anyway. */
const CLOSE_BACKSTOP_MS = 5_000
const STILL_SERVED: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/metrics'])

/**
 * While draining, a request that still arrives (on a keep-alive connection busy when the listener
 * closed, or pipelined behind a request in flight) is refused before any work, in the error
 * envelope, and its connection closed. It replaces fastify's return503OnClosing, whose 503 has a
 * body of fastify's own shape.
 */
export const refuseWhileDraining = fp(
  async (app: FastifyInstance) => {
    app.addHook('onRequest', (request, _reply, done) => {
      // Health and metrics keep answering: /readyz says "draining", and a scrape sees the drain.
      if (!app.lifecycle.draining || STILL_SERVED.has(request.url)) {
        done()
        return
      }
      done(
        new GatewayError('server_shutting_down', 'This gateway instance is shutting down; the request was not run. Retry it.', {
          headers: { connection: 'close', 'x-should-retry': 'true' }
        })
      )
    })
  },
  { name: 'refuse-while-draining', dependencies: ['error-handler'] }
)

/**
 * Graceful shutdown: readiness fails at once, the listener closes (new connections are refused,
 * requests arriving on open keep-alive connections get 503 server_shutting_down), in-flight
 * requests (long uploads and streams included) run to their end for up to `graceMs`, then
 * whatever is left is cut, and the upstream pools and Redis close.
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

/**
 * The process's exits. SIGTERM or SIGINT: drain for `graceMs`, then exit 0. A second signal during
 * the drain: exit 1 at once (an operator who presses Ctrl-C twice, or an orchestrator past its
 * patience). An uncaught exception: log it, drain for at most FATAL_GRACE_MS, exit 1. Every exit
 * goes through process.exit, whose 'exit' event is where pino writes out what it still holds.
 */
export function exitOnSignalsAndFatalErrors(app: FastifyInstance, log: FastifyBaseLogger, graceMs: number): void {
  let closing = false
  // Raised to 1 by an uncaught exception, even one that comes during a drain a signal started.
  let exitCode = 0
  const close = (reason: string, grace: number): void => {
    closing = true
    log.info({ reason, graceMs: grace }, 'draining')
    setTimeout(() => {
      log.error({ reason }, 'closing did not finish after the grace period: exiting')
      process.exit(1)
    }, grace + CLOSE_BACKSTOP_MS).unref()
    shutdown(app, grace).then(
      (outcome) => {
        log.info({ outcome }, 'closed')
        process.exit(exitCode)
      },
      (err: unknown) => {
        log.error({ err: safeError(err) }, 'close failed')
        process.exit(1)
      }
    )
  }
  const onSignal = (signal: NodeJS.Signals): void => {
    if (!closing) return close(signal, graceMs)
    log.warn({ signal }, 'second signal during the drain: exiting at once')
    process.exit(1)
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  process.on('uncaughtException', (err, origin) => {
    log.fatal({ err: safeError(err), origin }, 'uncaught exception: draining, then exiting 1')
    exitCode = 1
    if (!closing) close('uncaughtException', Math.min(graceMs, FATAL_GRACE_MS))
  })
}
