import type { FastifyInstance } from 'fastify'
import type { KeyStore } from '../keys/types.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Set when shutdown begins: readiness fails at once, so balancers stop sending traffic. */
    lifecycle: { draining: boolean }
  }
}

/**
 * GET /healthz: the process is alive. GET /readyz: it should get traffic (config loaded, the key
 * store answering when it is Redis, not draining). Neither needs a key.
 */
export default async function healthRoutes(app: FastifyInstance, options: { store: KeyStore }): Promise<void> {
  app.get('/healthz', async () => ({ status: 'ok' }))

  app.get('/readyz', async (_request, reply) => {
    const reasons: string[] = []
    if (app.lifecycle.draining) reasons.push('draining')
    if (options.store.kind === 'redis') {
      await options.store.ping().catch(() => reasons.push('redis unreachable'))
    }
    if (reasons.length > 0) return reply.code(503).send({ status: 'unavailable', reasons })
    return { status: 'ready' }
  })
}
