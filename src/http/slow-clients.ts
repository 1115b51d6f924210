import type { ServerOptions } from 'node:http'
import type { Socket } from 'node:net'
import { PassThrough, type Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config/schema.js'
import { GatewayError, type OpenAIErrorBody } from '../errors/catalogue.js'

/*
 * What protects the gateway from slow clients, and what Node (20) measures:
 *
 * - server.headersTimeout: from a request's first byte (a new connection's, or the next request's
 *   on a keep-alive one) to the end of its headers. Past it Node answers 408 and closes. Stops
 *   slowloris; a connection that sends nothing at all counts from its opening.
 * - server.requestTimeout: the same clock, until the request's body has been received whole; the
 *   answer is not timed (node_http_parser.cc drops the connection from the checked list on
 *   message complete). It is a deadline, not an idle timer, so it would cut a large upload arriving
 *   steadily over minutes: off by default (`server.requestTimeoutMs: 0`).
 * - Both are enforced by a sweep every `connectionsCheckingInterval` (30 s by default, so a deadline
 *   could fire up to 30 s late); the sweep here runs at a quarter of the shortest deadline, at
 *   most every second.
 * - server.keepAliveTimeout: an idle connection between requests is closed after it (Node 20 adds
 *   1 s to it). It does not time anything while a request is in flight.
 * - fastify's connectionTimeout (socket.setTimeout, inactivity in both directions) stays 0: a
 *   client waiting minutes, silently, for an image would be cut by it.
 * - A body that stalls is stopped by `limits.uploadIdleMs`, per chunk: the multipart relay's own
 *   timer, and `bodyIdle` below for every other body. A slow but moving client is never cut.
 */

/** Node's http.Server options for the `server` section (fastify passes them to http.createServer). */
export function httpServerOptions(server: Config['server']): ServerOptions {
  const deadlines = [server.headersTimeoutMs, server.requestTimeoutMs].filter((ms) => ms > 0)
  return {
    headersTimeout: server.headersTimeoutMs,
    requestTimeout: server.requestTimeoutMs,
    keepAliveTimeout: server.keepAliveTimeoutMs,
    // Read when the server starts listening, so it has to be given here, not set afterwards.
    connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(Math.min(...deadlines) / 4)))
  }
}

const STATUS_LINES: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' }

function envelope(message: string): OpenAIErrorBody {
  return { error: { message, type: 'invalid_request_error', param: null, code: null } }
}

/**
 * Node's 'clientError' (a request that timed out before it reached fastify, or could not be
 * parsed as HTTP), answered in OpenAI's envelope rather than fastify's, then the socket closed.
 */
export function clientErrorHandler(this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  let status: number
  let body: OpenAIErrorBody
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408
    body = new GatewayError('request_timeout', 'The request was not received in time.').toBody()
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    status = 431
    body = envelope('The request headers are too large.')
  } else {
    status = 400
    body = envelope('The request could not be parsed as HTTP.')
  }
  this.log.debug({ code: err.code, status }, 'client error')
  // As Node does: no answer on top of one whose headers already went out.
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage
  if (socket.writable && inFlight?.headersSent !== true) {
    const payload = JSON.stringify(body)
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_LINES[status]}\r\nConnection: close\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`
    )
  }
  socket.destroy(err)
}

const BODYLESS = new Set(['GET', 'HEAD', 'TRACE'])

function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length']
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

function isMultipart(request: FastifyRequest): boolean {
  return (request.headers['content-type'] ?? '').trimStart().toLowerCase().startsWith('multipart/')
}

/**
 * The body as the parsers read it, failed with 408 `request_timeout` when the client sends
 * nothing for `idleMs`. Silence counts only while the body is being waited for: not once it has
 * ended, not while the reader holds it back (backpressure), not once the answer has begun.
 */
function idleWatched(raw: FastifyRequest['raw'], reply: FastifyReply, idleMs: number): Readable {
  const body = new PassThrough()
  const onIdle = (): void => {
    if (raw.readableEnded || body.destroyed || reply.raw.headersSent) return
    if (raw.isPaused()) {
      timer.refresh()
      return
    }
    raw.unpipe(body)
    // The parser gets the error, and the error handler answers 408 with Connection: close.
    body.destroy(new GatewayError('request_timeout', `The request body sent nothing for ${idleMs / 1000} s.`))
  }
  const timer = setTimeout(onIdle, idleMs).unref()
  const stop = (): void => clearTimeout(timer)
  raw.on('data', () => timer.refresh())
  raw.once('end', stop)
  raw.once('close', stop)
  reply.raw.once('close', stop)
  // pipe() carries data, backpressure and the end; a client's reset is passed on by hand.
  raw.once('error', (err) => {
    stop()
    body.destroy(err)
  })
  raw.pipe(body)
  return body
}

/**
 * Every request body but a multipart one (whose relay has its own idle timer) is watched for
 * silence: a JSON body that stops midway is answered 408 instead of holding its connection (and
 * the admission it may be waiting for) forever. A body on GET/HEAD is never read, so the
 * connection closes after the answer rather than sit draining it.
 */
async function bodyIdle(app: FastifyInstance, options: { idleMs: number }): Promise<void> {
  app.addHook('preParsing', (request, reply, payload, done) => {
    if (!hasBody(request)) {
      done(null, payload)
      return
    }
    if (BODYLESS.has(request.method)) {
      reply.header('connection', 'close')
      done(null, payload)
      return
    }
    if (isMultipart(request) || payload !== request.raw) {
      done(null, payload)
      return
    }
    done(null, idleWatched(request.raw, reply, options.idleMs))
  })
}

export default fp(bodyIdle, { name: 'body-idle' })
