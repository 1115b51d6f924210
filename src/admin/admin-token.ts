import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import { bearerToken } from '../http/bearer.js'

function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest()
}

/**
 * Puts the admin token in front of every route of this scope (register the admin routes without
 * fastify-plugin, so that the hook covers them only).
 */
export function requireAdminToken(app: FastifyInstance, adminToken: string): void {
  const tokenDigest = sha256(adminToken)
  app.addHook('onRequest', async (request: FastifyRequest) => {
    const candidate = bearerToken(request.headers.authorization) ?? undefined
    // Digests of both sides have the same length, so timingSafeEqual never throws and the
    // comparison time says nothing about the token's length or how much of it matched.
    if (candidate === undefined || !timingSafeEqual(sha256(candidate), tokenDigest)) {
      throw new GatewayError(
        'invalid_admin_token',
        'The admin API needs the admin token in an Authorization header (Authorization: Bearer ADMIN_TOKEN).'
      )
    }
  })
}
