import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { Endpoint } from '../openai/models.js'
import type { Deployment } from '../providers/registry.js'

export interface ForwardRequest {
  deployment: Deployment
  endpoint: Endpoint
  headers: Record<string, string>
  body: Buffer | Readable
  /** Aborted when the client leaves or the upload breaks a rule; its reason is what we answer. */
  signal: AbortSignal
}

/** The upstream could not be reached, broke the connection, or was too slow: undici's error is the cause. */
export class TransportError extends Error {
  constructor(cause: unknown) {
    super('upstream transport failure', { cause })
    this.name = 'TransportError'
  }
}

/** The one place that talks to undici. */
export async function forward(request: ForwardRequest): Promise<Dispatcher.ResponseData> {
  const { deployment } = request
  const target = deployment.targets[request.endpoint]
  if (target === undefined) throw new Error(`deployment ${deployment.id} cannot serve ${request.endpoint}`)
  try {
    return await deployment.provider.dispatcher.request({
      origin: target.origin,
      path: target.path,
      method: 'POST',
      headers: request.headers,
      body: request.body,
      signal: request.signal
    })
  } catch (err) {
    if (request.signal.aborted) throw request.signal.reason
    throw new TransportError(err)
  }
}
