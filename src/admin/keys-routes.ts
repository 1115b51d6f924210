import type { FastifyInstance } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import { compareByCreation, keyView, parseKeyInput, parseUsageDays, usageView, type KeyView } from '../keys/key-view.js'
import { StoreUnavailableError, type KeyRecord, type KeyStore } from '../keys/types.js'
import { requireAdminToken } from './admin-token.js'

export interface AdminKeysOptions {
  store: KeyStore
  /** ADMIN_TOKEN; undefined (or empty) turns the admin API off. */
  adminToken: string | undefined
}

interface IdParams {
  id: string
}

/** The store could not answer: 503, which clients may retry, rather than a 500 of our own. */
async function fromStore<T>(call: Promise<T>): Promise<T> {
  try {
    return await call
  } catch (err) {
    if (err instanceof StoreUnavailableError) {
      throw new GatewayError('service_unavailable', 'The key store is unavailable; try again shortly.', { cause: err })
    }
    throw err
  }
}

function notFound(id: string): GatewayError {
  return new GatewayError('key_not_found', `No key with id '${id}'.`)
}

/**
 * The key administration API under /admin/keys. Registered without fastify-plugin on purpose:
 * the admin token hook must cover these routes only. Bodies use the root scope's JSON parser.
 * No response here ever carries a key except the one that creates it.
 */
export default async function adminKeysRoutes(app: FastifyInstance, options: AdminKeysOptions): Promise<void> {
  const { store, adminToken } = options
  // No token, no admin API: its paths fall through to the app's not-found handler.
  if (adminToken === undefined || adminToken === '') return

  requireAdminToken(app, adminToken)

  async function view(record: KeyRecord): Promise<KeyView> {
    return keyView(record, await fromStore(store.spentMicroUsd(record.id)))
  }

  async function existing(id: string): Promise<KeyRecord> {
    const record = await fromStore(store.get(id))
    if (record === null) throw notFound(id)
    return record
  }

  app.post('/admin/keys', async (request, reply) => {
    const input = parseKeyInput(request.body, 'create')
    const { record, key } = await fromStore(store.create(input))
    reply.code(201)
    // The one answer that carries the key: the store keeps only its digest.
    return { ...keyView(record, 0), key }
  })

  app.get('/admin/keys', async () => {
    const records = (await fromStore(store.list())).sort(compareByCreation)
    return { object: 'list', data: await Promise.all(records.map(view)) }
  })

  app.get<{ Params: IdParams }>('/admin/keys/:id', async (request) => view(await existing(request.params.id)))

  app.patch<{ Params: IdParams }>('/admin/keys/:id', async (request) => {
    const patch = parseKeyInput(request.body, 'update')
    const record = await fromStore(store.update(request.params.id, patch))
    if (record === null) throw notFound(request.params.id)
    return view(record)
  })

  app.post<{ Params: IdParams }>('/admin/keys/:id/revoke', async (request) => {
    const record = await fromStore(store.revoke(request.params.id))
    if (record === null) throw notFound(request.params.id)
    return view(record)
  })

  app.get<{ Params: IdParams; Querystring: Record<string, string | string[] | undefined> }>(
    '/admin/keys/:id/usage',
    async (request) => {
      const raw = request.query.days
      // A repeated ?days= is an array: no single value to take, so it is refused like a bad one.
      const days = parseUsageDays(Array.isArray(raw) ? '' : raw)
      const record = await existing(request.params.id)
      const usage = await fromStore(store.usage(record.id, days, Date.now()))
      return { key_id: record.id, ...usageView(usage) }
    }
  )
}
