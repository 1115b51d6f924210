import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
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
 * OpenAI's image bodies nest three levels (`images[].image_url`). Deeper ones are refused as they
 * are parsed: re-serialising one (for an alias, or the default model made explicit) recursed in
 * JSON.stringify and overflowed the stack near 5,000 levels, a 500 for a 10 KB body.
 */
export const MAX_JSON_DEPTH = 64

/** Walked without recursion, and without copying a large array's items. */
function nestedDeeperThan(value: object, limit: number): boolean {
  const pending: [object, number][] = [[value, 1]]
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [item, depth] = next
    if (depth > limit) return true
    const children = item as Record<string, unknown>
    const keep = (child: unknown): void => {
      if (child !== null && typeof child === 'object') pending.push([child, depth + 1])
    }
    if (Array.isArray(item)) for (let i = 0; i < item.length; i++) keep(item[i])
    else for (const key in children) keep(children[key])
  }
  return false
}

/**
 * Bodies are relayed as sent and never decoded, so a compressed one could be neither checked nor
 * relayed (its Content-Encoding is not forwarded): refused before a byte is read (RFC 9110 §15.5.16).
 */
function refuseContentEncoding(request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void): void {
  const coding = request.headers['content-encoding']
  if (coding === undefined || ['', 'identity'].includes(coding.trim().toLowerCase())) {
    done()
    return
  }
  done(
    new GatewayError('unsupported_content_encoding', 'Compressed request bodies are not supported: send the body without Content-Encoding.', {
      headers: { 'accept-encoding': 'identity' }
    })
  )
}

/**
 * POST /v1/images/{generations,edits,variations}. This scope has its own body parsers: JSON is
 * kept as bytes beside its parsed value (so it can be relayed unchanged), and multipart is not
 * parsed at all here: the route streams it (fastify's bodyLimit does not apply; the relay counts).
 */
export default async function imageRoutes(app: FastifyInstance, options: ImageRoutesOptions): Promise<void> {
  const { relay } = options
  const { limits } = relay
  // After authentication (a global onRequest hook), before the in-flight cap and the key's limits.
  app.addHook('onRequest', refuseContentEncoding)
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
    if (nestedDeeperThan(value, MAX_JSON_DEPTH)) {
      done(new GatewayError('invalid_json', `The JSON body is nested more than ${MAX_JSON_DEPTH} levels deep.`), undefined)
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
