import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import type { Endpoint } from '../openai/models.js'
import type { Deployment, Registry, RoutedModel } from '../providers/registry.js'
import { relayAnswer } from '../upstream/answer.js'
import { forward } from '../upstream/forward.js'
import { upstreamRequestHeaders } from '../upstream/headers.js'

export function findModel(registry: Registry, name: string): RoutedModel {
  const routed = registry.models.get(name)
  if (routed === undefined) {
    throw new GatewayError('model_not_found', `The model '${name}' does not exist or you do not have access to it.`)
  }
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
  const upstream = await forward({
    deployment: job.deployment,
    endpoint: job.endpoint,
    headers,
    body: job.body,
    signal: job.signal
  })
  request.gateway.upstreamStatus = upstream.statusCode
  const upstreamId = upstream.headers['x-request-id']
  request.gateway.upstreamRequestId = typeof upstreamId === 'string' ? upstreamId : null
  await relayAnswer(reply, upstream, { providerId: provider.id, secrets: registry.secrets })
}
