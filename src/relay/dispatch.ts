import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import type { Config } from '../config/schema.js'
import type { Charge, Meter } from '../limits/charge.js'
import type { Fields } from '../openai/validate.js'
import type { Endpoint } from '../openai/models.js'
import type { Deployment, Registry, RoutedModel } from '../providers/registry.js'
import { relayAnswer } from '../upstream/answer.js'
import { forward } from '../upstream/forward.js'
import { upstreamRequestHeaders } from '../upstream/headers.js'
import { ClientClosedError } from './lifetime.js'

/** What the relay flows share: routing, body limits and the charging of keys. */
export interface RelayContext {
  registry: Registry
  limits: Config['limits']
  meter: Meter
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

/** The deployment that serves this request (several deployments per model come with routing). */
export function chooseDeployment(routed: RoutedModel): Deployment {
  const deployment = routed.deployments[0]
  if (deployment === undefined) throw new Error(`model ${routed.name} has no deployment`)
  return deployment
}

export interface Dispatch {
  endpoint: Endpoint
  deployment: Deployment
  body: Buffer | Readable
  contentType: string
  contentLength: number | null
  signal: AbortSignal
  /** The request's hold on its key's limits; settled here, whatever happens. */
  charge: Charge | null
  /** Whether the upstream may have received the whole request (and so started billable work). */
  wholeRequestSent: () => boolean
}

/** Sends the request to its deployment and the answer back to the client. */
export async function dispatch(
  registry: Registry,
  request: FastifyRequest,
  reply: FastifyReply,
  job: Dispatch
): Promise<void> {
  const provider = job.deployment.provider
  request.gateway.deployment = job.deployment.id
  const headers = upstreamRequestHeaders(
    request.headers,
    { contentType: job.contentType, contentLength: job.contentLength },
    provider.targets[job.endpoint].headers
  )
  const abortedBeforeCall = job.signal.aborted
  let upstream
  try {
    upstream = await forward({
      deployment: job.deployment,
      endpoint: job.endpoint,
      headers,
      body: job.body,
      signal: job.signal
    })
  } catch (err) {
    // A client that left is charged the reservation only if the upstream had the whole request.
    if (err instanceof ClientClosedError && !abortedBeforeCall && job.wholeRequestSent()) job.charge?.abandoned()
    else job.charge?.failed()
    throw err
  }
  request.gateway.upstreamStatus = upstream.statusCode
  const upstreamId = upstream.headers['x-request-id']
  request.gateway.upstreamRequestId = typeof upstreamId === 'string' ? upstreamId : null
  await relayAnswer(reply, upstream, { providerId: provider.id, secrets: registry.secrets }, job.charge)
}
