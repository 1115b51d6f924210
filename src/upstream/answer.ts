import { PassThrough, Readable, Transform } from 'node:stream'
import type { FastifyReply } from 'fastify'
import type { Dispatcher } from 'undici'
import { MAX_UPSTREAM_ERROR_BODY_BYTES } from '../config/defaults.js'
import { UsageTap } from '../billing/usage-tap.js'
import { GatewayError, type OpenAIErrorBody } from '../errors/catalogue.js'
import type { ImageHosting, ResponseFormat } from '../images/hosting.js'
import type { Charge } from '../limits/charge.js'
import { clientGone } from '../relay/lifetime.js'
import { clientResponseHeaders } from './headers.js'
import { mapTransportError } from './transport-errors.js'

/** Why an answer that may have cost never reached the gateway whole. */
export type LostAnswer = 'client_left' | 'upstream_failed'

/** Where a copy of a successful answer goes, chunk by chunk, as the client's copy streams. */
export interface AnswerCopy {
  push(chunk: Buffer): void
  /** The upstream's answer was read to its end. */
  end(): void
  /** It was not: the client left, or the upstream broke off. */
  abort(why: LostAnswer): void
}

/**
 * Hears how a request ended at the upstream, and may keep a copy of a successful answer
 * (idempotency does, src/idempotency/guard.ts). Told at the same points as the request's Charge.
 */
export interface AnswerRecorder {
  /** Nothing that costs was made: refused, failed before the upstream had the request, or an error answer. */
  failed(): void
  /** The upstream may have done (and billed) work whose answer did not reach the gateway whole. */
  abandoned(why: LostAnswer): void
  /** A 2xx answer starts, with the headers the client gets; where to copy its body (null: nowhere). */
  answer(status: number, headers: Readonly<Record<string, string>>, streaming: boolean): AnswerCopy | null
}

export interface AnswerContext {
  providerId: string
  /** Credentials that must never reach the client, even when an upstream echoes them. */
  secrets: readonly string[]
  /** The provider's error bodies in OpenAI's envelope (see ProviderAdapter.normaliseError). */
  normaliseError: (raw: Buffer, status: number) => OpenAIErrorBody | null
}


export function redact(text: string, secrets: readonly string[]): string {
  let out = text
  for (const secret of secrets) if (secret.length > 0) out = out.split(secret).join('***')
  return out
}

function isEventStream(contentType: string | string[] | undefined): boolean {
  return typeof contentType === 'string' && contentType.toLowerCase().startsWith('text/event-stream')
}

/**
 * An image stream that breaks after its headers were sent can no longer change status. The SDKs
 * raise an APIError for any SSE message whose data has an `error` key (spec §6.2), so one is sent
 * and the stream ends, instead of a cut connection the client would retry blindly.
 */
function guardEventStream(source: Readable): Readable {
  const out = new PassThrough()
  source.on('error', () => {
    const event = {
      type: 'error',
      error: { message: 'The upstream image stream broke off.', type: 'server_error', param: null, code: 'upstream_bad_response' }
    }
    out.end(`event: error\ndata: ${JSON.stringify(event)}\n\n`)
  })
  out.on('close', () => {
    if (!source.readableEnded) source.destroy()
  })
  source.pipe(out)
  return out
}

async function readCapped(body: Readable, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    const room = maxBytes - size
    chunks.push(chunk.length > room ? chunk.subarray(0, room) : chunk)
    size += Math.min(chunk.length, room)
    if (size >= maxBytes) {
      body.destroy()
      break
    }
  }
  return Buffer.concat(chunks)
}

/** The start of an upstream error body, read whole up to a cap (to reshape it). */
export function readErrorBody(upstream: Dispatcher.ResponseData): Promise<Buffer> {
  return readCapped(upstream.body, MAX_UPSTREAM_ERROR_BODY_BYTES)
}

/**
 * An upstream error answer, already read, to the client: in OpenAI's envelope, cleaned of
 * credentials. A 401 is about the gateway's provider key, not the client's gateway key: passing it
 * on would tell the client its own key is wrong, and would echo parts of ours.
 */
export function relayError(reply: FastifyReply, upstream: Dispatcher.ResponseData, raw: Buffer, context: AnswerContext): void {
  if (upstream.statusCode === 401) {
    throw new GatewayError('upstream_credentials_rejected', `The upstream provider "${context.providerId}" refused the gateway's credentials.`)
  }
  const body = context.normaliseError(raw, upstream.statusCode)
  if (body === null) {
    throw new GatewayError(
      'upstream_error',
      `The upstream provider "${context.providerId}" answered HTTP ${upstream.statusCode} without an error body.`,
      { status: upstream.statusCode >= 400 ? upstream.statusCode : 502 }
    )
  }
  const payload = Buffer.from(redact(JSON.stringify(body), context.secrets))
  const headers = clientResponseHeaders(upstream.headers, false)
  delete headers['content-encoding']
  reply.code(upstream.statusCode).headers(headers).header('content-type', 'application/json').send(payload)
}

/**
 * Sends a successful upstream answer to the client as it arrives: JSON, multi-MB b64_json and event
 * streams are piped unchanged with no buffering, while a tap reads what it used.
 */
export function relaySuccess(
  reply: FastifyReply,
  upstream: Dispatcher.ResponseData,
  charge: Charge | null,
  recorder: AnswerRecorder | null = null
): void {
  const streaming = isEventStream(upstream.headers['content-type'])
  const headers = clientResponseHeaders(upstream.headers, !streaming)
  sendSuccess(reply, upstream.statusCode, headers, upstream.body, streaming, charge, recorder)
}

function sendSuccess(
  reply: FastifyReply,
  status: number,
  headers: Record<string, string>,
  source: Readable,
  streaming: boolean,
  charge: Charge | null,
  recorder: AnswerRecorder | null
): void {
  const copy = recorder?.answer(status, headers, streaming) ?? null
  if (streaming) headers['x-accel-buffering'] = 'no'
  // An answer that breaks after its headers went out can only be cut (or, as an event stream, ended
  // with an error event): the request's log line says why, and does not call it a client that left.
  source.once('error', (err) => {
    if (!clientGone(reply)) reply.request.gateway.errorCode = mapTransportError(err, '').code
  })
  const body = charge === null && copy === null ? source : metered(source, streaming, reply, charge, copy)
  reply
    .code(status)
    .headers(headers)
    .send(streaming ? guardEventStream(body) : body)
}

/** Whether an answer is one whose images can be hosted: a JSON answer, not an event stream. */
export function isHostable(upstream: Dispatcher.ResponseData): boolean {
  return !isEventStream(upstream.headers['content-type'])
}

/** The body whole, or null when it is over `maxBytes` (leaving the loop destroys the body). */
async function readWhole(body: Readable, maxBytes: number): Promise<Buffer | null> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > maxBytes) return null
    chunks.push(chunk)
  }
  return Buffer.concat(chunks, size)
}

/**
 * A successful JSON answer whose images the gateway hosts or inlines (docs/images.md): read whole,
 * its `data` reshaped, then sent as any answer is (metered, copied for idempotency). The upstream
 * made the images, so a failure here charges the reservation and says not to retry.
 */
export async function relayHosted(
  reply: FastifyReply,
  upstream: Dispatcher.ResponseData,
  charge: Charge | null,
  recorder: AnswerRecorder | null,
  job: { hosting: ImageHosting; want: ResponseFormat | null; rehost: boolean; signal: AbortSignal }
): Promise<void> {
  const { hosting, signal } = job
  let body: Buffer
  try {
    const whole = await readWhole(upstream.body, hosting.options.maxAnswerBytes)
    if (whole === null) {
      throw new GatewayError('image_hosting_failed', `The upstream's answer is over the ${hosting.options.maxAnswerBytes} bytes read to host its images.`, {
        headers: { 'x-should-retry': 'false' }
      })
    }
    const answer: unknown = JSON.parse(whole.toString('utf8'))
    if (answer === null || typeof answer !== 'object' || Array.isArray(answer)) {
      body = whole
    } else {
      reply.request.gateway.hosted = await hosting.shape(answer as Record<string, unknown>, job.want, job.rehost, signal)
      body = Buffer.from(JSON.stringify(answer))
    }
  } catch (err) {
    const clientLeft = signal.aborted
    charge?.abandoned()
    recorder?.abandoned(clientLeft ? 'client_left' : 'upstream_failed')
    if (clientLeft) throw signal.reason
    if (err instanceof GatewayError) throw err
    throw new GatewayError('upstream_bad_response', "The upstream's answer could not be read to host its images.", {
      cause: err,
      headers: { 'x-should-retry': 'false' }
    })
  }
  const headers = clientResponseHeaders(upstream.headers, false)
  headers['content-length'] = String(body.length)
  sendSuccess(reply, upstream.statusCode, headers, Readable.from([body]), false, charge, recorder)
}

/**
 * The answer on its way to the client, read on the side for what it used (images, tokens), so the
 * request is charged what it cost once the client has it all; a client that leaves first is
 * charged the reservation (the upstream may have billed). A copy, when asked for, gets the same
 * chunks as they pass (the client's are never held back for it).
 */
function metered(source: Readable, streaming: boolean, reply: FastifyReply, charge: Charge | null, copy: AnswerCopy | null): Readable {
  const tap = new UsageTap(streaming ? 'event-stream' : 'json')
  const tapping = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      tap.push(chunk)
      copy?.push(chunk)
      callback(null, chunk)
    },
    // The whole answer has been read: its image count is known before the log line is written.
    flush(callback) {
      reply.request.gateway.images = tap.result().imagesReturned
      copy?.end()
      callback()
    }
  })
  // An error or a destroy on either side tears down both (and so the upstream request). Wired by
  // hand: stream.pipeline makes an AbortController and aborts it, a DOMException with its stack,
  // on every call, a measurable share of a small request's CPU (docs/performance.md).
  let broken = false
  const breakOff = (): void => {
    if (broken) return
    broken = true
    copy?.abort(clientGone(reply) ? 'client_left' : 'upstream_failed')
  }
  source.once('error', (err) => {
    breakOff()
    tapping.destroy(err)
  })
  source.once('close', () => {
    if (source.readableEnded || tapping.destroyed) return
    breakOff()
    tapping.destroy(new Error('the upstream answer closed before its end'))
  })
  tapping.once('close', () => {
    if (tapping.writableFinished) return
    breakOff()
    source.destroy()
  })
  source.pipe(tapping)
  if (clientGone(reply)) {
    charge?.abandoned()
    copy?.abort('client_left')
  } else if (charge !== null) {
    reply.raw.once('close', () => {
      if (reply.raw.writableFinished) charge.answered(tap.result())
      else charge.abandoned()
    })
  }
  return tapping
}
