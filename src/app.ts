import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Config } from './config/schema.js'
import errorHandler from './http/error-handler.js'
import requestContext, { requestId } from './http/request-context.js'
import { Registry } from './providers/registry.js'
import imageRoutes from './routes/images.js'
import modelRoutes from './routes/models.js'

declare module 'fastify' {
  interface FastifyInstance {
    registry: Registry
  }
}

export interface AppOptions {
  /** The process's logger; tests pass one that writes to a sink they read. */
  logger: FastifyBaseLogger
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
  app.decorate('registry', registry)
  app.addHook('onClose', async () => registry.close())

  // Order: error handler and request context first, so that every route below is covered.
  await app.register(errorHandler)
  await app.register(requestContext)
  await app.register(imageRoutes, { registry, limits: config.limits })
  await app.register(modelRoutes, { registry })
  return app
}
