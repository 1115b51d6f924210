import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import adminDeploymentsRoutes from './admin/deployments-routes.js'
import adminImagesRoutes from './admin/images-routes.js'
import adminKeyRoutes from './admin/keys-routes.js'
import { priceCostModel } from './billing/cost-model.js'
import { SMALL_BODY_LIMIT_BYTES } from './config/defaults.js'
import type { Config } from './config/schema.js'
import auth from './http/auth.js'
import errorHandler from './http/error-handler.js'
import healthRoutes from './http/health.js'
import metricsRoutes from './http/metrics.js'
import requestContext, { requestId } from './http/request-context.js'
import bodyIdle, { clientErrorHandler, httpServerOptions } from './http/slow-clients.js'
import { Authenticator } from './keys/authenticator.js'
import { createIdempotency } from './idempotency/guard.js'
import imageFilesRoutes from './images/files-route.js'
import { setUpHosting } from './images/setup.js'
import { createBackend, type StateBackend } from './keys/backend.js'
import { Meter } from './limits/charge.js'
import { refuseWhileDraining } from './lifecycle.js'
import { Registry } from './providers/registry.js'
import { RedisCooldownBoard, localBoard } from './routing/cooldown-board.js'
import { DeploymentHealth } from './routing/health.js'
import billingRoutes from './routes/billing.js'
import imageRoutes from './routes/images.js'
import modelRoutes from './routes/models.js'

declare module 'fastify' {
  interface FastifyInstance {
    registry: Registry
    health: DeploymentHealth
    keys: { backend: StateBackend; authenticator: Authenticator; meter: Meter }
  }
}

export interface AppOptions {
  /** The process's logger; tests pass one that writes to a sink they read. */
  logger: FastifyBaseLogger
  /** Where keys and counters live; by default from config (Redis, or in-process). */
  backend?: StateBackend
}

/** The listening server's own URL (localhost when it listens on every address): the links' base when no publicBaseUrl is set. */
function localBaseUrl(app: FastifyInstance): string {
  const address = app.server.address()
  if (address === null || typeof address !== 'object') return 'http://localhost'
  const host = address.address === '0.0.0.0' || address.address === '::' ? 'localhost' : address.address
  return `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`
}

/** The gateway as a fastify instance, ready but not listening (server.ts listens). */
export async function buildApp(config: Config, options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: options.logger,
    // One line per request, written by request-context on response; fastify's two are off.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'reqId' }),
    genReqId: requestId,
    // Slow clients (src/http/slow-clients.ts): headers get a deadline, bodies an idle timer, idle
    // keep-alive connections a timeout. Nothing times the answer: image calls take minutes.
    http: httpServerOptions(config.server),
    requestTimeout: config.server.requestTimeoutMs,
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    connectionTimeout: 0,
    clientErrorHandler,
    trustProxy: typeof config.server.trustProxy === 'boolean' ? config.server.trustProxy : [...config.server.trustProxy],
    // Routes without a cap of their own (admin); the image routes set theirs from `limits`.
    bodyLimit: SMALL_BODY_LIMIT_BYTES,
    // Off: refuseWhileDraining answers requests that arrive during the drain, in the error envelope.
    return503OnClosing: false
  })
  const registry = await Registry.create(config)
  const backend = options.backend ?? createBackend(config)
  const authenticator = new Authenticator(backend.store, {
    ttlMs: config.keys.cacheTtlMs,
    negativeTtlMs: config.keys.negativeCacheTtlMs,
    staleMs: config.keys.staleMs,
    maxEntries: 10_000
  })
  const shared = backend.shared
  shared?.health.watch(app.log)
  const board = shared === null ? localBoard() : new RedisCooldownBoard(shared.redis, shared.subscriber, shared.keyPrefix)
  const health = new DeploymentHealth(config.routing.cooldown, board)
  const meter = new Meter({ store: backend.store, costs: priceCostModel(config.prices), leaseMs: config.keys.leaseMs, log: app.log })
  const idempotency = createIdempotency(config.idempotency, shared)
  const hosted = await setUpHosting(config, shared, () => localBaseUrl(app), app.log)
  const hosting = hosted?.hosting ?? null
  app.decorate('registry', registry)
  app.decorate('health', health)
  app.decorate('keys', { backend, authenticator, meter })
  app.decorate('lifecycle', { draining: false })
  app.addHook('onClose', async () => {
    await meter.close()
    await health.close()
    await idempotency.close()
    await hosting?.close()
    await Promise.all([registry.close(), backend.store.close()])
  })

  // Order: error handler and request context first, so that every route below is covered; then
  // authentication, which the routes ask for through their `config.auth`.
  await app.register(errorHandler)
  await app.register(requestContext)
  await app.register(refuseWhileDraining)
  await app.register(bodyIdle, { idleMs: config.limits.uploadIdleMs })
  await app.register(auth, { authenticator })
  await app.register(imageRoutes, {
    relay: { registry, limits: config.limits, routing: config.routing, health, meter, idempotency, hosting },
    shared: backend.shared,
    maxInFlight: config.server.maxInFlight
  })
  if (hosted !== null) await app.register(imageFilesRoutes, hosted)
  await app.register(modelRoutes, { registry })
  await app.register(billingRoutes, { store: backend.store })
  await app.register(adminKeyRoutes, { store: backend.store, adminToken: config.admin.token })
  await app.register(adminDeploymentsRoutes, { registry, health, adminToken: config.admin.token })
  await app.register(adminImagesRoutes, { hosting, adminToken: config.admin.token })
  await app.register(healthRoutes, { store: backend.store })
  await app.register(metricsRoutes, { models: new Set(registry.models.keys()), authenticator })
  return app
}
