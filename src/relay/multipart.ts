import { pipeline, type Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import { dropFormFields } from '../multipart/drop-field.js'
import { MultipartRelay } from '../multipart/relay.js'
import { isValidBoundary } from '../multipart/scanner.js'
import { defaultModel, type Endpoint } from '../openai/models.js'
import { readModel } from '../openai/validate.js'
import { assertModelAllowed } from '../http/auth.js'
import { FormDigest, formFingerprint, formWitness } from '../idempotency/fingerprint.js'
import { REPLAYED } from '../idempotency/guard.js'
import { admit, dispatch, findModel, route, type RelayContext } from './dispatch.js'
import { clientLifetime } from './lifetime.js'
import { wantedFormat } from './response-format.js'

const WITHHELD_FIELDS: ReadonlySet<string> = new Set(['response_format'])

/** The body with the named parts taken out; destroying either side destroys the other (the upstream call's abort reaches the relay). */
function withoutFields(body: Readable, boundary: string, names: ReadonlySet<string>): Readable {
  const filter = dropFormFields(boundary, names)
  pipeline(body, filter, () => undefined)
  return filter
}

export function boundaryOf(contentType: string): string {
  const match = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType)
  const boundary = match?.[1] ?? match?.[2]
  if (boundary === undefined || !isValidBoundary(boundary)) {
    throw new GatewayError('invalid_multipart', 'The multipart Content-Type has no valid boundary parameter.')
  }
  return boundary
}

function declaredLength(request: FastifyRequest): number | null {
  const value = request.headers['content-length']
  if (value === undefined) return null
  const length = Number(value)
  return Number.isSafeInteger(length) && length >= 0 ? length : null
}

/**
 * Edits and variations as multipart: the client's bytes go upstream as they arrive (see
 * MultipartRelay); only the `model` value changes when the upstream knows the model by another name.
 */
export async function relayMultipart(
  context: RelayContext,
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint
): Promise<void> {
  const { limits } = context
  const contentType = request.headers['content-type'] ?? ''
  const boundary = boundaryOf(contentType)
  const length = declaredLength(request)
  if (length !== null && length > limits.multipartBodyBytes) {
    throw new GatewayError('request_too_large', `The request body is over ${limits.multipartBodyBytes} bytes.`)
  }
  const idempotent = context.idempotency.keyOf(request) !== null
  const relay = new MultipartRelay(request.raw, {
    endpoint,
    boundary,
    maxBodyBytes: limits.multipartBodyBytes,
    holdMemoryBytes: limits.holdMemoryBytes,
    idleTimeoutMs: limits.uploadIdleMs,
    declaredBytes: length
  })
  request.gateway.body = relay
  // With an Idempotency-Key, the form is identified as it streams: a stored answer is replayed
  // only to the same form, whatever its boundary.
  const form = idempotent ? new FormDigest(request.raw, boundary) : null
  reply.raw.once('close', () => relay.dispose())
  const lifetime = clientLifetime(reply)
  relay.onFailure((err) => lifetime.abort(err))
  // Any refusal from here to the dispatch (unknown or disallowed model, limits, idempotency) stops
  // the upload the same way: relay.fail reads and drops the rest, so the client reads the refusal.
  const refused = (err: unknown): never => {
    if (err instanceof GatewayError) relay.fail(err)
    throw err
  }
  await relay.routable
  const requested = readModel(relay.inspector)
  const model = requested ?? defaultModel(endpoint, (name) => relay.inspector.texts.has(name))
  request.gateway.model = model
  const { routed, routing } = (() => {
    try {
      const found = findModel(context.registry, model)
      assertModelAllowed(request, model)
      relay.route(model, found.rules)
      return { routed: found, routing: route(context, found, endpoint) }
    } catch (err) {
      return refused(err)
    }
  })()
  // Before the key's limits are taken: a replay costs none of them.
  const run = !idempotent
    ? null
    : await context.idempotency
        .open(request, reply, {
          endpoint,
          fingerprint: () => formFingerprint(model),
          signal: lifetime.signal,
          form: form === null ? null : formWitness(relay, form, model)
        })
        .catch(refused)
  if (run === REPLAYED) return
  // Kept for a second attempt only where there can be one: a model with several deployments.
  if (routing.order.length > 1) relay.keepForReplay(context.routing.replayBodyBytes)
  // Admitted on the fields read so far; an `n` that comes later is topped up before the form's
  // closing chunk goes upstream, so a late `n` cannot slip past the key's limits.
  const charge = await admit(context, request, model, routing.order[0], endpoint, relay.inspector).catch((err: unknown) => {
    run?.failed()
    return refused(err)
  })
  const key = request.apiKey
  if (charge !== null && key !== null && !relay.inspector.formEnded) {
    relay.setEndGate(() => context.meter.topUp(charge, key, relay.inspector))
  }
  let attempts = 0
  await dispatch(context, request, reply, {
    endpoint,
    route: routing,
    contentType,
    signal: lifetime.signal,
    charge,
    recorder: run,
    wantedFormat: () => wantedFormat(routed, relay.inspector),
    canSendAgain: () => relay.replayable,
    bodyFor: (deployment) => {
      if (attempts++ > 0 && !relay.replayable) return null
      const body = relay.body(deployment.upstreamModel, model)
      if (routed.withholdResponseFormat) {
        // A base64-only upstream refuses `response_format`, which may come anywhere in the form:
        // the part is taken out as the bytes pass, and the length is no longer known. The whole
        // request is sent once the filter's last byte is read (it may hold the form's tail).
        const filtered = withoutFields(body, boundary, WITHHELD_FIELDS)
        return { body: filtered, contentLength: null, wholeRequestSent: () => filtered.readableEnded }
      }
      return {
        body,
        contentLength: relay.upstreamLength(length, deployment.upstreamModel, model),
        wholeRequestSent: () => relay.bodyEnded
      }
    }
  })
}
