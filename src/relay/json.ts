import type { FastifyReply, FastifyRequest } from 'fastify'
import { defaultModel, type Endpoint } from '../openai/models.js'
import { readModel, validateFields, validateJsonEdit, type Fields } from '../openai/validate.js'
import { assertModelAllowed } from '../http/auth.js'
import { jsonFingerprint } from '../idempotency/fingerprint.js'
import { REPLAYED } from '../idempotency/guard.js'
import { admit, dispatch, findModel, route, type RelayContext } from './dispatch.js'
import { clientLifetime } from './lifetime.js'
import { wantedFormat } from './response-format.js'

/** A JSON body as parsed, with its bytes kept so they can be relayed unchanged. */
export interface JsonBody {
  raw: Buffer
  value: Record<string, unknown>
}

function jsonFields(value: Record<string, unknown>): Fields {
  return { source: 'json', get: (name) => (Object.hasOwn(value, name) ? value[name] : undefined) }
}

function upstreamValue(value: Record<string, unknown>, upstreamModel: string, withhold: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = { ...value, model: upstreamModel }
  if (withhold) delete out.response_format
  return out
}

/**
 * Generations, and the JSON form of edits: validated, then the client's own bytes go upstream.
 * The body is re-serialised only when the upstream must see another model name (an alias, or
 * OpenAI's default made explicit so that routing and upstream agree), or no `response_format`.
 */
export async function relayJson(
  context: RelayContext,
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint
): Promise<void> {
  const body = request.body as JsonBody
  request.gateway.body = { bytesIn: body.raw.length }
  // Before anything asynchronous: a client that leaves during admission must still abort the call.
  const lifetime = clientLifetime(reply)
  const fields = jsonFields(body.value)
  const requested = readModel(fields)
  const model = requested ?? defaultModel(endpoint, (name) => fields.get(name) != null)
  request.gateway.model = model
  const routed = findModel(context.registry, model)
  assertModelAllowed(request, model)
  validateFields(endpoint, model, routed.rules, fields)
  if (endpoint === 'edits') validateJsonEdit(model, routed.rules, fields)
  const routing = route(context, routed, endpoint)
  // A base64-only upstream refuses `response_format`; the gateway answers it (docs/images.md).
  const withhold = routed.withholdResponseFormat && Object.hasOwn(body.value, 'response_format')
  // Before the key's limits are taken: a replay costs none of them.
  const run =
    context.idempotency.keyOf(request) === null
      ? null
      : await context.idempotency.open(request, reply, { endpoint, fingerprint: () => jsonFingerprint(body.raw), signal: lifetime.signal })
  if (run === REPLAYED) return
  // Priced by the first choice: the deployments of one model are meant to be the same model.
  const charge = await admit(context, request, model, routing.order[0], endpoint, fields).catch((err: unknown) => {
    run?.failed()
    throw err
  })
  await dispatch(context, request, reply, {
    endpoint,
    route: routing,
    contentType: 'application/json',
    signal: lifetime.signal,
    charge,
    recorder: run,
    wantedFormat: () => wantedFormat(routed, fields),
    bodyFor: (deployment) => {
      const payload =
        requested === deployment.upstreamModel && !withhold ? body.raw : Buffer.from(JSON.stringify(upstreamValue(body.value, deployment.upstreamModel, withhold)))
      // A JSON body goes upstream whole the moment the call is made, and can always be sent again.
      return { body: payload, contentLength: payload.length, wholeRequestSent: () => true }
    }
  })
}
