import type { FastifyInstance } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import type { ImageHosting } from './hosting.js'
import { IMAGE_FILES_PATH, type LinkSigner } from './links.js'
import { IMAGE_CONTENT_TYPES, IMAGE_NAME, type ImageExtension } from './store.js'

export interface ImageFilesOptions {
  hosting: ImageHosting
  signer: LinkSigner
  now?: () => number
}

function storeFailed(err: unknown): never {
  throw new GatewayError('image_store_unavailable', 'The image store cannot be reached; try again shortly.', { cause: err })
}

/**
 * GET (and HEAD) /v1/images/files/{id}.{ext}?expires=&sig=: a hosted image, to whoever holds its
 * link; the signed link is the credential, as with OpenAI's own image URLs. A wrong signature is a
 * 404 (nothing tells it from a link that never was), an expired one a 410; both before any lookup.
 */
export default async function imageFilesRoutes(app: FastifyInstance, options: ImageFilesOptions): Promise<void> {
  const { hosting, signer } = options
  const now = options.now ?? Date.now
  app.get<{ Params: { name: string }; Querystring: Record<string, unknown> }>(`${IMAGE_FILES_PATH}/:name`, async (request, reply) => {
    const { name } = request.params
    const { expires, sig } = request.query
    const check = IMAGE_NAME.test(name) ? signer.check(name, expires, sig, now()) : 'invalid'
    if (check === 'expired') throw new GatewayError('image_link_expired', 'This image link has expired.')
    const bytes = check === 'valid' ? await hosting.store.get(name).catch(storeFailed) : null
    if (bytes === null) throw new GatewayError('image_link_invalid', 'No image is kept under this link.')
    const extension = name.slice(name.lastIndexOf('.') + 1) as ImageExtension
    const maxAge = Math.max(0, Number(expires) - Math.ceil(now() / 1000))
    return reply
      .header('content-type', IMAGE_CONTENT_TYPES[extension])
      .header('content-length', bytes.length)
      // Public: the link is the credential, so a CDN may keep the image as long as the link lasts.
      .header('cache-control', `public, max-age=${maxAge}, immutable`)
      .header('x-content-type-options', 'nosniff')
      .send(bytes)
  })
}
