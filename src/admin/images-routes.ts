import type { FastifyInstance } from 'fastify'
import type { ImageHosting } from '../images/hosting.js'
import { requireAdminToken } from './admin-token.js'

/** GET /admin/images: the hosted image store's backend, its images and bytes (expired ones deleted first), and the links' lifetime. */
export default async function adminImagesRoutes(
  app: FastifyInstance,
  options: { hosting: ImageHosting | null; adminToken: string | undefined }
): Promise<void> {
  const { hosting, adminToken } = options
  if (adminToken === undefined || adminToken === '') return
  requireAdminToken(app, adminToken)
  app.get('/admin/images', async () => {
    if (hosting === null) return { enabled: false }
    const usage = await hosting.usage()
    return { enabled: true, store: hosting.store.kind, ttlMs: hosting.options.ttlMs, ...usage }
  })
}
