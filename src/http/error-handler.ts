import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../errors/catalogue.js'
import { safeError } from '../errors/safe-error.js'
import { StoreUnavailableError } from '../keys/types.js'
import { ClientClosedError } from '../relay/lifetime.js'
import { lingerOnClose, type Linger } from './lingering-close.js'

/** Errors from fastify and from our own lower layers, in the catalogue's terms. */
function fromKnown(err: FastifyError): GatewayError | null {
  if (err instanceof StoreUnavailableError) {
    return new GatewayError('service_unavailable', 'The key store is unavailable right now. Try again shortly.', { cause: err })
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GatewayError('request_too_large', 'The request body is over the size this endpoint takes.')
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new GatewayError(
        'unsupported_content_type',
        'Unsupported Content-Type: image generations take application/json; edits take multipart/form-data or application/json; variations take multipart/form-data.'
      )
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return invalidJson()
    default:
      return null
  }
}

export function invalidJson(): GatewayError {
  return new GatewayError(
    'invalid_json',
    "We could not parse the JSON body of your request. The API expects a JSON object; check that the body is valid JSON and that Content-Type is application/json."
  )
}

/** Which limit a 429 of ours is about, from the headers it carries (x-ratelimit-limit-<limit>). */
function limitOf(error: GatewayError): string | null {
  if (error.code === 'insufficient_quota') return 'budget'
  if (error.code !== 'rate_limit_exceeded') return null
  const header = Object.keys(error.headers).find((name) => name.startsWith('x-ratelimit-limit-'))
  return header === undefined ? null : header.slice('x-ratelimit-limit-'.length)
}

const LOAD_REFUSALS: ReadonlySet<string> = new Set(['server_busy', 'server_shutting_down'])

/** After a refusal, what is read of a body still coming before the connection is cut. */
const LINGER: Linger = { maxBytes: 8 * 1024 * 1024, idleMs: 2000 }

/**
 * Clients read an error only if we stop waiting for the rest of an upload they are still sending:
 * the connection closes after the answer, with a lingering close so that they read it (a body
 * the multipart relay is already draining keeps the relay's terms).
 */
function closeIfUnread(request: FastifyRequest, reply: FastifyReply): void {
  if (request.raw.complete) return
  reply.header('connection', 'close')
  lingerOnClose(request.raw, LINGER)
}

/**
 * The one place that writes error bodies: OpenAI's envelope, `application/json`, the status from
 * the catalogue. A 5xx of our own shows a generic message; its cause goes to the log only.
 */
async function errorHandler(app: FastifyInstance): Promise<void> {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    // A client that left gets no answer, and its leaving is no failure of ours (logged as 499).
    if (err instanceof ClientClosedError || request.raw.socket?.destroyed) return
    const known = err instanceof GatewayError ? err : fromKnown(err)
    const error = known ?? new GatewayError('internal_error', 'The gateway failed to handle the request.', { cause: err })
    request.gateway.errorCode = error.code
    request.gateway.limit = limitOf(error)
    // Refusals for load are no fault: the request's own log line (status, code) is enough, and
    // under overload an error line with a stack for each would bury the real ones.
    if (error.status >= 500 && !LOAD_REFUSALS.has(error.code)) {
      request.log.error({ err: safeError(error.cause ?? error), code: error.code }, 'request failed')
    }
    if (reply.sent || reply.raw.headersSent || reply.raw.destroyed) return
    closeIfUnread(request, reply)
    reply
      .code(error.status)
      .headers(error.headers)
      .header('content-type', 'application/json')
      .send(Buffer.from(JSON.stringify(error.toBody())))
  })

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    const error = new GatewayError('unknown_url', `Invalid URL (${request.method} ${path})`)
    request.gateway.errorCode = error.code
    closeIfUnread(request, reply)
    reply.code(error.status).header('content-type', 'application/json').send(Buffer.from(JSON.stringify(error.toBody())))
  })
}

export default fp(errorHandler, { name: 'error-handler' })
