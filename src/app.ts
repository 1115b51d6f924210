import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import adminKeyRoutes from './admin/keys-routes.js'
import { priceCostModel } from './billing/cost-model.js'
import type { Config } from './config/schema.js'
import auth from './http/auth.js'
import errorHandler from './http/error-handler.js'
import healthRoutes from './http/health.js'
import metricsRoutes from './http/metrics.js'
import requestContext, { requestId } from './http/request-context.js'
import { Authenticator } from './keys/authenticator.js'
import { createBackend, type StateBackend } from './keys/backend.js'
import { Meter } from './limits/charge.js'
import { Registry } from './providers/registry.js'
import billingRoutes from './routes/billing.js'
import imageRoutes from './routes/images.js'
import modelRoutes from './routes/models.js'

declare module 'fastify' {
  interface FastifyInstance {
    registry: Registry
    keys: { backend: StateBackend; authenticator: Authenticator; meter: Meter }
  }
}

export interface AppOptions {
  /** The process's logger; tests pass one that writes to a sink they read. */
  logger: FastifyBaseLogger
  /** Where keys and counters live; by default from config (Redis, or in-process). */
  backend?: StateBackend
}

/** The gateway as a fastify instance, ready but not listening (server.ts listens). */
export async function buildApp(config: Config, options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: options.logger,
    // One line per request, written by request-context on response; fastify's two are off.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'reqId' }),
    genReqId: requestId,
    // The relay streams answers for minutes; nothing here may time a request out on its own.
    requestTimeout: 0,
    return503OnClosing: true
  })
  const registry = new Registry(config)
  const backend = options.backend ?? createBackend(config)
  const authenticator = new Authenticator(backend.store, {
    ttlMs: config.keys.cacheTtlMs,
    negativeTtlMs: config.keys.negativeCacheTtlMs,
    staleMs: config.keys.staleMs,
    maxEntries: 10_000
  })
  const meter = new Meter({ store: backend.store, costs: priceCostModel(config.prices), leaseMs: config.keys.leaseMs, log: app.log })
  app.decorate('registry', registry)
  app.decorate('keys', { backend, authenticator, meter })
  app.decorate('lifecycle', { draining: false })
  app.addHook('onClose', async () => {
    await meter.close()
    await Promise.all([registry.close(), backend.store.close()])
  })

  // Order: error handler and request context first, so that every route below is covered; then
  // authentication, which the routes ask for through their `config.auth`.
  await app.register(errorHandler)
  await app.register(requestContext)
  await app.register(auth, { authenticator })
  await app.register(imageRoutes, { relay: { registry, limits: config.limits, meter }, shared: backend.shared })
  await app.register(modelRoutes, { registry })
  await app.register(billingRoutes, { store: backend.store })
  await app.register(adminKeyRoutes, { store: backend.store, adminToken: config.admin.token })
  await app.register(healthRoutes, { store: backend.store })
  await app.register(metricsRoutes, { models: new Set(registry.models.keys()), authenticator })
  return app
}
