import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'

export interface FailedAttempt {
  deployment: string
  /** A FailureKind (routing/health.ts). */
  kind: string
}

/** What one request did, for its log line; filled in as the request goes. */
export interface RequestContext {
  model: string | null
  deployment: string | null
  /** Attempts at deployments that failed before the one that answered (failover). */
  failedAttempts: FailedAttempt[]
  upstreamStatus: number | null
  upstreamRequestId: string | null
  /** What counts the body bytes read (the JSON body, or the multipart relay). */
  body: { readonly bytesIn: number } | null
  /** The socket's bytesWritten when the request began (keep-alive sockets carry several requests). */
  socketBytesWrittenAtStart: number
  errorCode: string | null
  /** The client left before the answer was complete (logged as status 499). */
  clientClosed: boolean
  startedAt: number
  /** When the answer began to go out (its headers), for time to first byte. */
  firstByteAt: number | null
  /** Images in the answer, when the answer was read for them. */
  images: number | null
  /** Which limit refused the request (requests, images, concurrency, budget), if one did. */
  limit: string | null
  /** With an Idempotency-Key: replayed, stored, released or not_stored:<reason> (src/idempotency/guard.ts). */
  idempotent: string | null
  /** Images of the answer the gateway stored for links, or fetched to inline (src/images/hosting.ts). */
  hosted: HostedImages | null
  logged: boolean
}

export interface HostedImages {
  /** Stored, and answered as the gateway's own links. */
  stored: number
  storedBytes: number
  /** Fetched from the upstream's URLs (to re-host or to inline as base64). */
  fetched: number
}

/** One finished request, as logged and as counted in metrics. */
export interface RequestSummary {
  method: string
  route: string | null
  status: number
  keyId: string | null
  model: string | null
  deployment: string | null
  /** Failed attempts before the last, when there were any. */
  failover?: FailedAttempt[]
  upstreamStatus: number | null
  upstreamRequestId: string | null
  errorCode: string | null
  limit: string | null
  /** Only for requests with an Idempotency-Key. */
  idempotent?: string
  /** Only for answers whose images the gateway hosted or inlined. */
  hosted?: HostedImages
  images: number | null
  bytesIn: number
  bytesOut: number
  durationMs: number
  firstByteMs: number | null
}

declare module 'fastify' {
  interface FastifyRequest {
    gateway: RequestContext
  }
  interface FastifyInstance {
    /** Called with every finished request (after its log line), e.g. by the metrics. */
    requestDone: ((summary: RequestSummary) => void)[]
  }
}

// An incoming id is kept when it is short and plain, so that it can be logged and echoed safely.
const SANE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

export function requestId(request: { headers: Record<string, string | string[] | undefined> }): string {
  const incoming = request.headers['x-request-id']
  if (typeof incoming === 'string' && SANE_REQUEST_ID.test(incoming)) return incoming
  return `req_${randomUUID().replaceAll('-', '')}`
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10
}

/** The request's one log line; written once, when the answer finished or the client left. */
function finishRequest(app: FastifyInstance, request: FastifyRequest, reply: FastifyReply): void {
  const context = request.gateway
  if (context.logged) return
  context.logged = true
  const now = performance.now()
  const summary: RequestSummary = {
    method: request.method,
    route: request.routeOptions.url ?? null,
    status: context.clientClosed ? 499 : reply.statusCode,
    keyId: request.apiKey?.id ?? null,
    model: context.model,
    deployment: context.deployment,
    ...(context.failedAttempts.length === 0 ? {} : { failover: context.failedAttempts }),
    upstreamStatus: context.upstreamStatus,
    upstreamRequestId: context.upstreamRequestId,
    errorCode: context.errorCode,
    limit: context.limit,
    ...(context.idempotent === null ? {} : { idempotent: context.idempotent }),
    ...(context.hosted === null ? {} : { hosted: context.hosted }),
    images: context.images,
    bytesIn: context.body?.bytesIn ?? 0,
    // Wire bytes out, headers included: cheaper than counting every chunk of a relayed answer.
    bytesOut: Math.max(0, (request.raw.socket?.bytesWritten ?? 0) - context.socketBytesWrittenAtStart),
    durationMs: round(now - context.startedAt),
    firstByteMs: context.firstByteAt === null ? null : round(context.firstByteAt - context.startedAt)
  }
  request.log.info(summary, 'request')
  for (const listener of app.requestDone) listener(summary)
}

/**
 * Request ids and the one log line per request. The line carries no headers, keys or prompts:
 * request id, route, model, deployment, statuses, bytes and duration.
 */
async function requestContext(app: FastifyInstance): Promise<void> {
  app.decorateRequest('gateway', null as unknown as RequestContext)
  app.decorate('requestDone', [])

  app.addHook('onRequest', async (request, reply) => {
    request.gateway = {
      model: null,
      deployment: null,
      failedAttempts: [],
      upstreamStatus: null,
      upstreamRequestId: null,
      body: null,
      socketBytesWrittenAtStart: request.raw.socket?.bytesWritten ?? 0,
      errorCode: null,
      clientClosed: false,
      startedAt: performance.now(),
      firstByteAt: null,
      images: null,
      limit: null,
      idempotent: null,
      hosted: null,
      logged: false
    }
    reply.header('x-request-id', request.id)
    reply.header('x-gateway-request-id', request.id)
    // fastify runs onResponse on 'finish' only; a client that leaves first is seen here.
    reply.raw.once('close', () => {
      if (reply.raw.writableFinished) return
      // Unless the gateway cut it for an error of its own (an upstream answer that broke off).
      request.gateway.clientClosed = request.gateway.errorCode === null
      finishRequest(app, request, reply)
    })
  })

  // Callback style: this runs on every answer, and an async hook would cost a promise each time.
  app.addHook('onSend', (request, _reply, payload, done) => {
    request.gateway.firstByteAt ??= performance.now()
    done(null, payload)
  })

  app.addHook('onResponse', async (request, reply) => finishRequest(app, request, reply))
}

export default fp(requestContext, { name: 'request-context' })
