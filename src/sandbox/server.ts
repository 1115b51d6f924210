import { randomBytes } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { Readable } from 'node:stream'
import multipart from '@fastify/multipart'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Endpoint } from '../openai/models.js'
import { validateJsonEdit } from '../openai/validate.js'
import { jsonAnswer, streamAnswer, type DeliveryContext, type ImageJob } from './delivery.js'
import { missingParameter, SandboxError, toSandboxError } from './errors.js'
import { ImageStore } from './image-store.js'
import { formFields, jsonFields, readParameters, type ImageParameters } from './parameters.js'
import { editCanvas, generateCanvas, varyCanvas, type PixelSize } from './render.js'
import { checkImage, checkMask, imageRefBytes, readUpload, type InputImage } from './uploads.js'
import { WorkSlots } from './work-slots.js'

/**
 * The sandbox: a local stand-in for OpenAI's Images API that answers with real images (made by
 * render.ts), for first runs, demos, client tests and load tests. It is its own small fastify
 * server, on 127.0.0.1 and a free port by default, so the gateway relays to it over HTTP exactly
 * as it relays to OpenAI.
 */

export interface SandboxServer {
  /** `http://127.0.0.1:PORT` */
  readonly origin: string
  close(): Promise<void>
}

export interface SandboxOptions {
  /** Default 127.0.0.1. */
  host?: string
  /** Default 0: a free port. */
  port?: number
  /** How long the images of url answers can be fetched; default 60 minutes, as at OpenAI. */
  imageTtlMs?: number
  /** Bytes of url-answer images kept at most, the oldest dropped first; default 256 MiB. */
  maxStoredImageBytes?: number
}

const MiB = 1024 * 1024
const DEFAULT_IMAGE_TTL_MS = 60 * 60 * 1000
const DEFAULT_MAX_STORED_IMAGE_BYTES = 256 * MiB
/** JSON edits carry their images as data: URLs; the gateway's own cap defaults to 64 MiB. */
const MAX_JSON_BODY_BYTES = 256 * MiB
/** OpenAI's per-file limit for GPT image models (spec §4.1). */
const MAX_FILE_BYTES = 50 * MiB
/** 16 images and a mask. */
const MAX_FILES = 17
/** A 32,000-character prompt is at most 128 KB of UTF-8. */
const MAX_FIELD_BYTES = 1 * MiB
/** Leaves libuv's thread pool (4 threads) room for everything else in the process. */
const IMAGE_JOB_SLOTS = Math.max(1, Math.min(2, availableParallelism()))
/** The size of generations and variations that name none, or `auto`. */
const DEFAULT_SIZE: PixelSize = { width: 1024, height: 1024 }

function jsonBody(request: FastifyRequest): Readonly<Record<string, unknown>> {
  const body = request.body
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new SandboxError(400, 'We could not parse the JSON body of your request. The API expects a JSON object.', { code: 'invalid_json' })
  }
  return body as Record<string, unknown>
}

function unsupportedContentType(endpoint: Endpoint, takes: string): SandboxError {
  return new SandboxError(400, `Unsupported Content-Type: image ${endpoint} take ${takes}.`, { code: 'unsupported_content_type' })
}

async function respond(context: DeliveryContext, reply: FastifyReply, job: ImageJob): Promise<unknown> {
  if (!job.params.stream) return reply.send(await jsonAnswer(context, job))
  // Headers go out now; from here a failure can only be an `error` event (delivery.ts).
  return reply
    .header('content-type', 'text/event-stream; charset=utf-8')
    .header('cache-control', 'no-cache')
    .send(Readable.from(streamAnswer(context, job), { objectMode: false }))
}

function generationJob(params: ImageParameters): ImageJob {
  const size = params.size ?? DEFAULT_SIZE
  const transparent = params.rules.family === 'gpt-image' && params.background === 'transparent'
  return {
    params,
    kind: 'image_generation',
    outputSize: size,
    inputImages: 0,
    make: (index) => generateCanvas(params.prompt, size, index, transparent)
  }
}

function editJob(params: ImageParameters, images: InputImage[], mask: InputImage | null): ImageJob {
  const first = images[0]
  if (first === undefined) throw missingParameter('image')
  const input = { image: first.bytes, mask: mask?.bytes ?? null }
  return {
    params,
    kind: 'image_edit',
    outputSize: params.size ?? { width: first.facts.width, height: first.facts.height },
    inputImages: images.length,
    make: (index) => editCanvas(input, params.prompt, params.size, index)
  }
}

async function checkEditImages(params: ImageParameters, images: readonly Buffer[], imageParam: (index: number) => string): Promise<InputImage[]> {
  if (images.length === 0) throw missingParameter('image')
  if (images.length > params.rules.files.maxImages) {
    throw new SandboxError(400, `Too many images: ${params.model} takes at most ${params.rules.files.maxImages}.`, {
      code: 'too_many_images',
      param: 'image'
    })
  }
  return Promise.all(images.map((bytes, index) => checkImage(bytes, imageParam(index), 'image', params.rules)))
}

async function checkedMask(params: ImageParameters, bytes: Buffer | null, first: InputImage, param: string): Promise<InputImage | null> {
  if (bytes === null) return null
  const mask = await checkImage(bytes, param, 'mask', params.rules)
  checkMask(mask, first, param)
  return mask
}

async function multipartEdit(request: FastifyRequest): Promise<ImageJob> {
  const upload = await readUpload(request)
  const params = readParameters('edits', formFields(upload.values))
  const images = await checkEditImages(params, upload.images, () => 'image')
  const mask = await checkedMask(params, upload.mask, images[0] as InputImage, 'mask')
  return editJob(params, images, mask)
}

async function jsonEdit(request: FastifyRequest): Promise<ImageJob> {
  const body = jsonBody(request)
  const fields = jsonFields(body)
  const params = readParameters('edits', fields)
  validateJsonEdit(params.model, params.rules, fields)
  const refs = Array.isArray(body.images) ? body.images : []
  const images = await checkEditImages(
    params,
    refs.map((ref: unknown, index) => imageRefBytes(ref, `images[${index}]`)),
    (index) => `images[${index}].image_url`
  )
  const maskBytes = body.mask == null ? null : imageRefBytes(body.mask, 'mask')
  const mask = await checkedMask(params, maskBytes, images[0] as InputImage, 'mask.image_url')
  return editJob(params, images, mask)
}

async function variationJob(request: FastifyRequest): Promise<ImageJob> {
  if (!request.isMultipart()) throw unsupportedContentType('variations', 'multipart/form-data')
  const upload = await readUpload(request)
  const params = readParameters('variations', formFields(upload.values))
  const bytes = upload.images[0]
  if (bytes === undefined) throw missingParameter('image')
  const image = await checkImage(bytes, 'image', 'image', params.rules)
  const size = params.size ?? DEFAULT_SIZE
  // dall-e-2 never streams, so the event kind is never used.
  return { params, kind: 'image_generation', outputSize: size, inputImages: 1, make: (index) => varyCanvas(image.bytes, size, index) }
}

function routes(app: FastifyInstance, context: DeliveryContext): void {
  app.post('/v1/images/generations', async (request, reply) => {
    if (request.isMultipart()) throw unsupportedContentType('generations', 'application/json')
    return respond(context, reply, generationJob(readParameters('generations', jsonFields(jsonBody(request)))))
  })

  app.post('/v1/images/edits', async (request, reply) => {
    return respond(context, reply, await (request.isMultipart() ? multipartEdit(request) : jsonEdit(request)))
  })

  app.post('/v1/images/variations', async (request, reply) => respond(context, reply, await variationJob(request)))

  app.get<{ Params: { name: string } }>('/v1/images/files/:name', async (request, reply) => {
    const image = context.store.get(request.params.name)
    if (image === undefined) {
      throw new SandboxError(404, 'This image does not exist or has expired (images are kept for a limited time).', {
        code: 'image_not_found'
      })
    }
    const maxAgeSeconds = Math.max(0, Math.floor((image.expiresAtMs - Date.now()) / 1000))
    return reply
      .header('content-type', image.contentType)
      .header('content-length', image.bytes.length)
      .header('cache-control', `private, max-age=${maxAgeSeconds}`)
      .send(image.bytes)
  })
}

/** The sandbox as a fastify instance that does not listen; `origin` is what its URLs start with. */
export async function buildSandboxApp(options: { origin: () => string; store: ImageStore }): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, bodyLimit: MAX_JSON_BODY_BYTES })
  await app.register(multipart, {
    limits: { fileSize: MAX_FILE_BYTES, files: MAX_FILES, fieldSize: MAX_FIELD_BYTES, fields: 64, parts: 128 }
  })
  const slots = new WorkSlots(IMAGE_JOB_SLOTS)
  const context: DeliveryContext = {
    slots,
    store: options.store,
    get origin() {
      return options.origin()
    }
  }

  // The headers OpenAI sends that clients and the gateway read (spec §7.4).
  app.addHook('onRequest', async (_request, reply) => {
    reply.header('x-request-id', `req_${randomBytes(16).toString('hex')}`).header('openai-version', '2020-10-01')
  })
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('openai-processing-ms', Math.round(reply.elapsedTime))
    return payload
  })

  app.setErrorHandler((err, _request, reply) => {
    const error = toSandboxError(err)
    if (reply.sent || reply.raw.headersSent) return
    void reply.code(error.status).header('content-type', 'application/json').send(error.toBody())
  })
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    const error = new SandboxError(404, `Invalid URL (${request.method} ${path})`)
    void reply.code(404).header('content-type', 'application/json').send(error.toBody())
  })
  app.addHook('onClose', async () => options.store.clear())

  routes(app, context)
  return app
}

function originOf(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`
}

export async function startSandbox(options: SandboxOptions = {}): Promise<SandboxServer> {
  const host = options.host ?? '127.0.0.1'
  const store = new ImageStore({
    ttlMs: options.imageTtlMs ?? DEFAULT_IMAGE_TTL_MS,
    maxBytes: options.maxStoredImageBytes ?? DEFAULT_MAX_STORED_IMAGE_BYTES
  })
  let origin = ''
  const app = await buildSandboxApp({ origin: () => origin, store })
  await app.listen({ host, port: options.port ?? 0 })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('the sandbox is not listening on a TCP port')
  origin = originOf(host, address.port)
  return {
    origin,
    close: () => app.close()
  }
}
