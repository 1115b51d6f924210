import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import { invalidJson } from '../http/error-handler.js'
import { capInFlight } from '../http/in-flight.js'
import type { Endpoint } from '../openai/models.js'
import { requestsPerMinute } from '../limits/requests-per-minute.js'
import type { RelayContext } from '../relay/dispatch.js'
import { relayJson, type JsonBody } from '../relay/json.js'
import { relayMultipart } from '../relay/multipart.js'
import type { SharedCounters } from '../keys/backend.js'

export interface ImageRoutesOptions {
  relay: RelayContext
  /** Where requests per minute are counted across instances; null: in this process. */
  shared: SharedCounters | null
  /** server.maxInFlight: image requests in flight on this instance; 0 is no cap. */
  maxInFlight: number
}

function mediaType(request: FastifyRequest): string {
  return (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? ''
}

function unsupported(endpoint: Endpoint, takes: string): GatewayError {
  return new GatewayError('unsupported_content_type', `Unsupported Content-Type: image ${endpoint} take ${takes}.`)
}

/**
 * POST /v1/images/{generations,edits,variations}. This scope has its own body parsers: JSON is
 * kept as bytes beside its parsed value (so it can be relayed unchanged), and multipart is not
 * parsed at all here: the route streams it (fastify's bodyLimit does not apply; the relay counts).
 */
export default async function imageRoutes(app: FastifyInstance, options: ImageRoutesOptions): Promise<void> {
  const { relay } = options
  const { limits } = relay
  capInFlight(app, options.maxInFlight)
  await requestsPerMinute(app, options.shared)
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, raw, done) => {
    let value: unknown
    try {
      value = JSON.parse((raw as Buffer).toString('utf8'))
    } catch {
      done(invalidJson(), undefined)
      return
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      done(invalidJson(), undefined)
      return
    }
    const body: JsonBody = { raw: raw as Buffer, value: value as Record<string, unknown> }
    done(null, body)
  })
  app.addContentTypeParser('multipart/form-data', (_request, _payload, done) => done(null, undefined))

  const auth = { auth: true }
  app.post('/v1/images/generations', { bodyLimit: limits.jsonBodyBytes, config: auth }, async (request, reply) => {
    if (mediaType(request) !== 'application/json') throw unsupported('generations', 'application/json')
    await relayJson(relay, request, reply, 'generations')
    return reply
  })

  app.post('/v1/images/edits', { bodyLimit: limits.jsonEditBodyBytes, config: auth }, async (request, reply) => {
    if (mediaType(request) === 'multipart/form-data') await relayMultipart(relay, request, reply, 'edits')
    else await relayJson(relay, request, reply, 'edits')
    return reply
  })

  app.post('/v1/images/variations', { config: auth }, async (request, reply) => {
    if (mediaType(request) !== 'multipart/form-data') throw unsupported('variations', 'multipart/form-data')
    await relayMultipart(relay, request, reply, 'variations')
    return reply
  })
}
