import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { Endpoint } from '../openai/models.js'
import type { Deployment } from '../providers/registry.js'
import { mapTransportError } from './transport-errors.js'

export interface ForwardRequest {
  deployment: Deployment
  endpoint: Endpoint
  headers: Record<string, string>
  body: Buffer | Readable
  /** Aborted when the client leaves or the upload breaks a rule; its reason is what we answer. */
  signal: AbortSignal
}

/** The one place that talks to undici. */
export async function forward(request: ForwardRequest): Promise<Dispatcher.ResponseData> {
  const { provider } = request.deployment
  const target = provider.targets[request.endpoint]
  try {
    return await provider.dispatcher.request({
      origin: target.origin,
      path: target.path,
      method: 'POST',
      headers: request.headers,
      body: request.body,
      signal: request.signal
    })
  } catch (err) {
    if (request.signal.aborted) throw request.signal.reason
    throw mapTransportError(err, provider.id)
  }
}
