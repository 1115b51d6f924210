import { setTimeout as sleep } from 'node:timers/promises'
import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import { GatewayError } from '../errors/catalogue.js'
import type { Config } from '../config/schema.js'
import type { Idempotency } from '../idempotency/guard.js'
import type { Charge, Meter } from '../limits/charge.js'
import type { Fields } from '../openai/validate.js'
import type { Endpoint } from '../openai/models.js'
import type { Deployment, Registry, RoutedModel } from '../providers/registry.js'
import { candidates } from '../routing/balancer.js'
import type { DeploymentHealth } from '../routing/health.js'
import { answerFailure, isFailoverStatus, transportFailure, type AttemptFailure } from '../routing/outcome.js'
import type { ImageHosting, ResponseFormat } from '../images/hosting.js'
import {
  isHostable,
  readErrorBody,
  relayError,
  relayHosted,
  relaySuccess,
  type AnswerContext,
  type AnswerRecorder,
  type LostAnswer
} from '../upstream/answer.js'
import { TransportError, forward } from '../upstream/forward.js'
import { upstreamRequestHeaders } from '../upstream/headers.js'
import { mapTransportError } from '../upstream/transport-errors.js'
import { ClientClosedError } from './lifetime.js'

/** What the relay flows share: routing, body limits and the charging of keys. */
export interface RelayContext {
  registry: Registry
  limits: Config['limits']
  routing: Config['routing']
  health: DeploymentHealth
  meter: Meter
  /** Requests with an Idempotency-Key run once (src/idempotency/guard.ts). */
  idempotency: Idempotency
  /** Hosted image links (src/images/hosting.ts); null when no model or provider asks for them. */
  hosting: ImageHosting | null
}

/** Takes the request's share of its key's limits (after routing and validation, before dispatch). */
export async function admit(
  context: RelayContext,
  request: FastifyRequest,
  model: string,
  deployment: Deployment,
  endpoint: Endpoint,
  fields: Fields
): Promise<Charge | null> {
  const key = request.apiKey
  if (key === null) return null
  return context.meter.admit(key, context.meter.priceName(model, deployment.upstreamModel), endpoint, fields)
}

export function modelNotFound(name: string): GatewayError {
  return new GatewayError('model_not_found', `The model '${name}' does not exist or you do not have access to it.`)
}

export function findModel(registry: Registry, name: string): RoutedModel {
  const routed = registry.models.get(name)
  if (routed === undefined) throw modelNotFound(name)
  return routed
}

/** The deployments to try for this request, in order (see routing/balancer.ts); never empty. */
export function route(context: RelayContext, routed: RoutedModel, endpoint: Endpoint): Route {
  const { order, fallback } = candidates(routed.deployments, endpoint, context.health)
  const [first, ...rest] = order
  if (first === undefined) {
    throw new GatewayError('endpoint_not_supported', `The model '${routed.name}' has no deployment that serves image ${endpoint}.`, {
      param: 'model'
    })
  }
  return { order: [first, ...rest], fallback }
}

export interface Route {
  order: [Deployment, ...Deployment[]]
  /** Every deployment was cooling down: they are tried anyway (see routing/balancer.ts). */
  fallback: boolean
}

/** One attempt's request body. */
export interface AttemptBody {
  body: Buffer | Readable
  contentLength: number | null
  /** Whether the upstream may have received the whole request (and so started billable work). */
  wholeRequestSent: () => boolean
}

export interface Dispatch {
  endpoint: Endpoint
  /** The deployments to try, in order (from `route`). */
  route: Route
  contentType: string
  signal: AbortSignal
  /** The request's hold on its key's limits; settled here, whatever happens. */
  charge: Charge | null
  /** The body for an attempt at this deployment; null when it cannot be sent again. */
  bodyFor: (deployment: Deployment) => AttemptBody | null
  /** Whether bodyFor can give a second attempt its body (default: yes); asked before waiting out a retry-after. */
  canSendAgain?: () => boolean
  /** Told how the request ended, beside the charge (idempotency keeps the answer); null: no one. */
  recorder?: AnswerRecorder | null
  /**
   * How the client wants its images when the gateway answers `response_format` itself (a model
   * with `hostImages`); null: as the upstream gives them. Asked when the answer comes, so that a
   * multipart field read after routing counts.
   */
  wantedFormat?: () => ResponseFormat | null
}

/** Nothing that costs was made. */
function failed(job: Dispatch): void {
  job.charge?.failed()
  job.recorder?.failed()
}

/** The upstream had the request, and may have done (and billed) the work. */
function abandoned(job: Dispatch, why: LostAnswer): void {
  job.charge?.abandoned()
  job.recorder?.abandoned(why)
}

interface Failed {
  deployment: Deployment
  failure: AttemptFailure
  /** What to answer if no other attempt follows: an error, or the deployment's own answer. */
  answer: { error: GatewayError } | { upstream: Dispatcher.ResponseData; raw: Buffer }
}

function answerContext(registry: Registry, deployment: Deployment): AnswerContext {
  const { provider } = deployment
  return { providerId: provider.id, secrets: registry.secrets, normaliseError: provider.adapter.normaliseError }
}

/**
 * Sends the request to its deployments in order until one answers, and that answer to the client.
 * The next deployment gets the request after a failure that says the deployment is at fault (see
 * routing/outcome.ts), while no byte has gone to the client, the body can be sent again, and the
 * attempts and time allowed are not used up. Each attempt's outcome goes to the deployment's health.
 */
export async function dispatch(context: RelayContext, request: FastifyRequest, reply: FastifyReply, job: Dispatch): Promise<void> {
  const { routing } = context
  const started = Date.now()
  const queue = [...job.route.order]
  let last: Failed | null = null
  let waitedOnce = false
  let attempt = 0
  while (attempt < routing.maxAttempts) {
    let deployment = queue.shift()
    // Taken out (or its one probe taken by another request) since this request was routed.
    if (deployment !== undefined && !job.route.fallback && queue.length > 0 && context.health.availability(deployment.id) === 'cooling') continue
    if (deployment === undefined && last !== null && !waitedOnce) {
      // No other deployment left: a short retry-after is waited out, once.
      const wait = last.failure.retryAfterMs
      if (wait === null || wait > routing.maxRetryWaitMs || Date.now() - started + wait > routing.maxTotalMs) break
      // An upload that was not kept cannot be sent again: waiting would only delay the 429.
      if (job.canSendAgain?.() === false) break
      waitedOnce = true
      await sleep(wait, undefined, { signal: job.signal }).catch(() => undefined)
      if (job.signal.aborted) break
      deployment = last.deployment
    }
    if (deployment === undefined) break
    if (attempt > 0 && Date.now() - started > routing.maxTotalMs) break
    const body = job.bodyFor(deployment)
    if (body === null) break
    attempt++
    const outcome = await attemptAt(context, request, reply, job, deployment, body)
    if (outcome === null) return
    last = outcome
    request.gateway.failedAttempts.push({ deployment: deployment.id, kind: outcome.failure.kind })
    if (!outcome.failure.failover || job.signal.aborted) break
  }
  if (last === null) throw new Error('dispatch: no deployment was tried')
  await answerWithFailure(context, reply, job, last)
}

/** One attempt; null when it answered the client, else why it failed. */
async function attemptAt(
  context: RelayContext,
  request: FastifyRequest,
  reply: FastifyReply,
  job: Dispatch,
  deployment: Deployment,
  body: AttemptBody
): Promise<Failed | null> {
  const { health } = context
  const target = deployment.targets[job.endpoint]
  if (target === undefined) throw new Error(`deployment ${deployment.id} cannot serve ${job.endpoint}`)
  request.gateway.deployment = deployment.id
  health.startProbe(deployment.id)
  const headers = upstreamRequestHeaders(request.headers, { contentType: job.contentType, contentLength: body.contentLength }, target.headers)
  const abortedBeforeCall = job.signal.aborted
  const sentAt = Date.now()
  let upstream: Dispatcher.ResponseData
  try {
    upstream = await forward({ deployment, endpoint: job.endpoint, headers, body: body.body, signal: job.signal })
  } catch (err) {
    const latency = Date.now() - sentAt
    if (!(err instanceof TransportError)) {
      // The client left or the upload broke a rule: nothing to say about the deployment.
      health.released(deployment.id)
      // A client that left is charged the reservation only if the upstream had the whole request.
      if (err instanceof ClientClosedError && !abortedBeforeCall && body.wholeRequestSent()) abandoned(job, 'client_left')
      else failed(job)
      throw err
    }
    const failure = transportFailure(err.cause, body.wholeRequestSent())
    health.failed(deployment.id, failure.kind, latency)
    return { deployment, failure, answer: { error: mapTransportError(err.cause, deployment.provider.id) } }
  }
  const latency = Date.now() - sentAt
  if (isFailoverStatus(upstream.statusCode)) {
    let raw: Buffer
    try {
      raw = await readErrorBody(upstream)
    } catch (err) {
      // The error answer broke off while read: the deployment failed all the same, unless the
      // client left (then nothing is known about it).
      if (job.signal.aborted) {
        health.released(deployment.id)
        failed(job)
        throw job.signal.reason
      }
      const failure = transportFailure(err, body.wholeRequestSent())
      health.failed(deployment.id, failure.kind, latency)
      return { deployment, failure: { ...failure, failover: true }, answer: { error: mapTransportError(err, deployment.provider.id) } }
    }
    const failure = answerFailure(upstream.statusCode, upstream.headers, deployment.provider.adapter.normaliseError(raw, upstream.statusCode))
    if (failure !== null) {
      health.failed(deployment.id, failure.kind, latency, {
        ...(failure.retryAfterMs === null ? {} : { forMs: failure.retryAfterMs }),
        now: failure.takeOutNow
      })
      return { deployment, failure, answer: { upstream, raw } }
    }
  }
  // Any other answer, errors in the request included, says the deployment works.
  health.succeeded(deployment.id, latency)
  noteAnswer(request, reply, deployment, upstream)
  if (upstream.statusCode >= 200 && upstream.statusCode < 300) {
    const want = job.wantedFormat?.() ?? null
    const rehost = deployment.provider.config.rehostUrls
    if (context.hosting !== null && (want !== null || rehost) && isHostable(upstream)) {
      await relayHosted(reply, upstream, job.charge, job.recorder ?? null, { hosting: context.hosting, want, rehost, signal: job.signal })
    } else {
      relaySuccess(reply, upstream, job.charge, job.recorder ?? null)
    }
    return null
  }
  failed(job)
  relayError(reply, upstream, await readErrorBody(upstream), answerContext(context.registry, deployment))
  return null
}


function noteAnswer(request: FastifyRequest, reply: FastifyReply, deployment: Deployment, upstream: Dispatcher.ResponseData): void {
  request.gateway.upstreamStatus = upstream.statusCode
  const upstreamId = upstream.headers['x-request-id']
  request.gateway.upstreamRequestId = typeof upstreamId === 'string' ? upstreamId : null
  reply.header('x-gateway-deployment', deployment.id)
}

/**
 * The last failure, as the client sees it: the deployment's own error answer, or ours. A request
 * the upstream had whole is not to be sent again by the client either (it may be generating).
 */
async function answerWithFailure(context: RelayContext, reply: FastifyReply, job: Dispatch, last: Failed): Promise<void> {
  const { deployment, failure, answer } = last
  const mayHaveStarted = !failure.failover
  if (mayHaveStarted) abandoned(job, 'upstream_failed')
  else failed(job)
  if ('error' in answer) {
    const err = answer.error
    if (!mayHaveStarted) throw err
    throw new GatewayError(err.code, err.message, { cause: err.cause, headers: { 'x-should-retry': 'false' } })
  }
  noteAnswer(reply.request, reply, deployment, answer.upstream)
  relayError(reply, answer.upstream, answer.raw, answerContext(context.registry, deployment))
}
