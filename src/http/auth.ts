import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../errors/catalogue.js'
import type { Authenticator } from '../keys/authenticator.js'
import type { KeyRecord } from '../keys/types.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's key, on routes with `config: { auth: true }`. */
    apiKey: KeyRecord | null
  }
  interface FastifyContextConfig {
    /** The route needs a gateway key (checked in onRequest, before any body byte is read). */
    auth?: boolean
  }
}

const patterns = new Map<string, RegExp>()

function matches(pattern: string, model: string): boolean {
  if (pattern === '*' || pattern === model) return true
  if (!pattern.includes('*')) return false
  let compiled = patterns.get(pattern)
  if (compiled === undefined) {
    const source = pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')
    compiled = new RegExp(`^${source}$`)
    patterns.set(pattern, compiled)
  }
  return compiled.test(model)
}

/** Whether a key may use a model: its exact names and `*` patterns. */
export function allowsModel(record: KeyRecord, model: string): boolean {
  return record.models.some((pattern) => matches(pattern, model))
}

export function assertModelAllowed(request: FastifyRequest, model: string): void {
  const record = request.apiKey
  if (record !== null && !allowsModel(record, model)) {
    throw new GatewayError('model_not_allowed', `This key may not use the model '${model}'.`, { param: 'model' })
  }
}

/**
 * Gateway keys on every route whose config says `auth: true` (never by URL prefix). The key is
 * found before the body is read, so an unauthenticated upload is refused without reading it.
 */
async function auth(app: FastifyInstance, options: { authenticator: Authenticator }): Promise<void> {
  app.decorateRequest('apiKey', null)
  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.auth !== true) return
    request.apiKey = await options.authenticator.authenticate(request.headers.authorization, Date.now())
  })
}

export default fp(auth, { name: 'auth', dependencies: ['error-handler'] })
