import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import t from 'tap'
import adminKeysRoutes from '../../src/admin/keys-routes.js'
import errorHandler from '../../src/http/error-handler.js'
import requestContext from '../../src/http/request-context.js'
import { digestOf } from '../../src/keys/key-material.js'
import { MemoryKeyStore } from '../../src/keys/memory-store.js'
import { StoreUnavailableError } from '../../src/keys/types.js'

/* /admin/keys on a bare app with the real error handler and request context, as src/app.ts has them. */

const TOKEN = 'admin-token-0123456789abcdef'
const AUTH = { authorization: `Bearer ${TOKEN}` }

async function build(adminToken: string | undefined, store = new MemoryKeyStore()): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  await app.register(errorHandler)
  await app.register(requestContext)
  await app.register(adminKeysRoutes, { store, adminToken })
  await app.ready()
  return app
}

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null }
}

function errorOf(res: LightMyRequestResponse): ErrorBody['error'] {
  return res.json<ErrorBody>().error
}

t.test('no admin token configured: the admin API is off (404 unknown_url)', async (t) => {
  for (const token of [undefined, '']) {
    const app = await build(token)
    t.teardown(() => app.close())
    for (const [method, url] of [
      ['GET', '/admin/keys'],
      ['POST', '/admin/keys'],
      ['GET', '/admin/keys/key_x'],
      ['POST', '/admin/keys/key_x/revoke']
    ] as const) {
      const res = await app.inject({ method, url, headers: { authorization: 'Bearer anything' } })
      t.equal(res.statusCode, 404, `${method} ${url} with token ${JSON.stringify(token)}`)
      t.equal(errorOf(res).code, 'unknown_url')
    }
  }
})

t.test('401 invalid_admin_token without the right token', async (t) => {
  const app = await build(TOKEN)
  t.teardown(() => app.close())
  const wrong: Record<string, string>[] = [
    {},
    { authorization: '' },
    { authorization: TOKEN },
    { authorization: 'Bearer ' },
    { authorization: 'Bearer nope' },
    { authorization: `Bearer ${TOKEN.slice(0, -1)}g` },
    { authorization: `Bearer ${TOKEN}x` },
    { authorization: `Bearer ${TOKEN.slice(0, -1)}` },
    { authorization: `Basic ${TOKEN}` }
  ]
  for (const headers of wrong) {
    for (const [method, url] of [
      ['GET', '/admin/keys'],
      ['POST', '/admin/keys'],
      ['GET', '/admin/keys/key_x/usage'],
      ['PATCH', '/admin/keys/key_x']
    ] as const) {
      const res = await app.inject({ method, url, headers, payload: method === 'GET' ? undefined : { name: 'x' } })
      t.equal(res.statusCode, 401, `${method} ${url} ${JSON.stringify(headers)}`)
      const error = errorOf(res)
      t.equal(error.code, 'invalid_admin_token')
      t.equal(error.type, 'invalid_request_error')
      t.ok(res.headers['x-request-id'], 'the request context ran first')
    }
  }
  const lower = await app.inject({ method: 'GET', url: '/admin/keys', headers: { authorization: `bearer ${TOKEN}` } })
  t.equal(lower.statusCode, 200, 'the scheme is case-insensitive')
})

t.test('the token hook covers the admin routes only', async (t) => {
  const store = new MemoryKeyStore()
  const app = Fastify({ logger: false })
  await app.register(errorHandler)
  await app.register(requestContext)
  await app.register(adminKeysRoutes, { store, adminToken: TOKEN })
  app.get('/elsewhere', async () => ({ ok: true }))
  await app.ready()
  t.teardown(() => app.close())
  const res = await app.inject({ method: 'GET', url: '/elsewhere' })
  t.equal(res.statusCode, 200, 'a route outside the plugin needs no admin token')
})

t.test('create returns the key once; it authenticates; list and show never carry it', async (t) => {
  const store = new MemoryKeyStore()
  const app = await build(TOKEN, store)
  t.teardown(() => app.close())

  const created = await app.inject({
    method: 'POST',
    url: '/admin/keys',
    headers: AUTH,
    payload: { name: 'ci', models: ['gpt-image-*'], rpm: 60, budget_usd: 12.5, metadata: { team: 'web' } }
  })
  t.equal(created.statusCode, 201)
  t.match(created.headers['content-type'], /^application\/json/)
  const body = created.json<Record<string, unknown>>()
  const key = body.key
  if (typeof key !== 'string') throw new Error('no key in the answer')
  const id = String(body.id)
  t.match(key, /^igw_[A-Za-z0-9_-]{43}$/)
  t.match(body, {
    id: /^key_[0-9a-f]{24}$/,
    name: 'ci',
    prefix: key.slice(0, 12),
    models: ['gpt-image-*'],
    rpm: 60,
    images_per_minute: null,
    concurrency: null,
    budget_usd: 12.5,
    spent_usd: 0,
    expires_at: null,
    disabled: false,
    revoked_at: null,
    metadata: { team: 'web' }
  })
  t.notOk('digest' in body, 'no digest')

  const found = await store.findByDigest(digestOf(key))
  t.equal(found?.id, id, 'the returned key is the stored key')
  t.equal(found?.budgetMicroUsd, 12_500_000, 'the budget is stored in micro-USD')

  const digest = digestOf(key)
  const list = await app.inject({ method: 'GET', url: '/admin/keys', headers: AUTH })
  const show = await app.inject({ method: 'GET', url: `/admin/keys/${id}`, headers: AUTH })
  for (const res of [list, show]) {
    t.equal(res.statusCode, 200)
    t.notOk(res.body.includes(key), 'never the key')
    t.notOk(res.body.includes(digest), 'never the digest')
    t.notOk(res.body.includes('"key"'), 'no key field')
  }
  t.match(list.json(), { object: 'list', data: [{ id, name: 'ci' }] })
  t.same(Object.keys(show.json<object>()).sort(), Object.keys(body).filter((k) => k !== 'key').sort(), 'show is create less the key')
})

t.test('list is in order of creation', async (t) => {
  const app = await build(TOKEN)
  t.teardown(() => app.close())
  const ids: string[] = []
  for (const name of ['a', 'b', 'c']) {
    const res = await app.inject({ method: 'POST', url: '/admin/keys', headers: AUTH, payload: { name } })
    ids.push(res.json<{ id: string }>().id)
    // Distinct creation times, so the order is by time and not by the id tie-break.
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
  const list = await app.inject({ method: 'GET', url: '/admin/keys', headers: AUTH })
  t.same(list.json<{ data: { id: string }[] }>().data.map((k) => k.id), ids)
})

t.test('update, revoke and usage', async (t) => {
  const store = new MemoryKeyStore()
  const app = await build(TOKEN, store)
  t.teardown(() => app.close())
  const invalidated: string[] = []
  store.onInvalidate((keyId) => invalidated.push(keyId))
  const created = await app.inject({ method: 'POST', url: '/admin/keys', headers: AUTH, payload: { name: 'k', rpm: 10 } })
  const { id, key } = created.json<{ id: string; key: string }>()

  const patched = await app.inject({
    method: 'PATCH',
    url: `/admin/keys/${id}`,
    headers: AUTH,
    payload: { name: 'renamed', rpm: null, concurrency: 3, disabled: true, expires_at: '2031-01-01T00:00:00+01:00' }
  })
  t.equal(patched.statusCode, 200)
  t.match(patched.json(), { id, name: 'renamed', rpm: null, concurrency: 3, disabled: true, expires_at: '2030-12-31T23:00:00.000Z' })
  t.notOk(patched.body.includes(key), 'update never returns the key')
  t.same(invalidated, [id], 'the update told the caches')

  const empty = await app.inject({ method: 'PATCH', url: `/admin/keys/${id}`, headers: AUTH, payload: {} })
  t.equal(empty.statusCode, 200, 'an empty patch changes nothing')
  t.match(empty.json(), { name: 'renamed', disabled: true, concurrency: 3 })

  const reenabled = await app.inject({ method: 'PATCH', url: `/admin/keys/${id}`, headers: AUTH, payload: { disabled: false } })
  t.match(reenabled.json(), { disabled: false, name: 'renamed' })

  const now = Date.now()
  await store.settle(id, 't1', { requests: 1, images: 2, inputTokens: 10, outputTokens: 20, costMicroUsd: 40_000 }, now)
  await store.settle(id, 't2', { requests: 1, images: 1, inputTokens: 5, outputTokens: 5, costMicroUsd: 11_000 }, now)

  const shown = await app.inject({ method: 'GET', url: `/admin/keys/${id}`, headers: AUTH })
  t.equal(shown.json<{ spent_usd: number }>().spent_usd, 0.051, 'spent in USD')

  const usage = await app.inject({ method: 'GET', url: `/admin/keys/${id}/usage?days=3`, headers: AUTH })
  t.equal(usage.statusCode, 200)
  const u = usage.json<{ key_id: string; object: string; data: { day: string; cost_usd: number }[]; total: Record<string, number> }>()
  t.equal(u.key_id, id)
  t.equal(u.object, 'list')
  t.equal(u.data.length, 3)
  t.equal(u.data[0]?.day, new Date(now).toISOString().slice(0, 10), 'today first')
  t.match(u.data[0], { requests: 2, images: 3, input_tokens: 15, output_tokens: 25, cost_usd: 0.051 })
  t.same(u.total, { requests: 2, images: 3, input_tokens: 15, output_tokens: 25, cost_usd: 0.051 })

  const defaultDays = await app.inject({ method: 'GET', url: `/admin/keys/${id}/usage`, headers: AUTH })
  t.equal(defaultDays.json<{ data: unknown[] }>().data.length, 30, '30 days by default')
  const year = await app.inject({ method: 'GET', url: `/admin/keys/${id}/usage?days=366`, headers: AUTH })
  t.equal(year.json<{ data: unknown[] }>().data.length, 366)

  const revoked = await app.inject({ method: 'POST', url: `/admin/keys/${id}/revoke`, headers: AUTH })
  t.equal(revoked.statusCode, 200)
  const revokedAt = revoked.json<{ revoked_at: string | null }>().revoked_at
  t.type(revokedAt, 'string')
  t.notOk(revoked.body.includes(key), 'revoke never returns the key')
  const again = await app.inject({ method: 'POST', url: `/admin/keys/${id}/revoke`, headers: AUTH })
  t.equal(again.json<{ revoked_at: string }>().revoked_at, revokedAt, 'revoking twice keeps the first time')
  t.equal((await store.get(id))?.revokedAt, revokedAt)
})

t.test('unknown ids: 404 key_not_found', async (t) => {
  const app = await build(TOKEN)
  t.teardown(() => app.close())
  for (const [method, url, payload] of [
    ['GET', '/admin/keys/key_000000000000000000000000', undefined],
    ['PATCH', '/admin/keys/key_000000000000000000000000', { rpm: 5 }],
    ['POST', '/admin/keys/key_000000000000000000000000/revoke', undefined],
    ['GET', '/admin/keys/key_000000000000000000000000/usage', undefined]
  ] as const) {
    const res = await app.inject({ method, url, headers: AUTH, payload })
    t.equal(res.statusCode, 404, `${method} ${url}`)
    t.equal(errorOf(res).code, 'key_not_found')
  }
})

t.test('validation errors: 400 with code and param', async (t) => {
  const store = new MemoryKeyStore()
  const app = await build(TOKEN, store)
  t.teardown(() => app.close())
  const { record } = await store.create({ name: 'k' })

  const cases: { method: 'POST' | 'PATCH'; url: string; payload: unknown; code: string; param: string | null }[] = [
    { method: 'POST', url: '/admin/keys', payload: {}, code: 'missing_required_parameter', param: 'name' },
    { method: 'POST', url: '/admin/keys', payload: { name: 'n', rpm: 0 }, code: 'invalid_value', param: 'rpm' },
    { method: 'POST', url: '/admin/keys', payload: { name: 'n', rpm: '5' }, code: 'invalid_type', param: 'rpm' },
    { method: 'POST', url: '/admin/keys', payload: { name: 'n', budget_usd: -1 }, code: 'invalid_value', param: 'budget_usd' },
    { method: 'POST', url: '/admin/keys', payload: { name: 'n', models: [] }, code: 'invalid_value', param: 'models' },
    { method: 'POST', url: '/admin/keys', payload: { name: 'n', expires_at: 'soon' }, code: 'invalid_value', param: 'expires_at' },
    { method: 'POST', url: '/admin/keys', payload: { name: 'n', disabled: true }, code: 'invalid_value', param: 'disabled' },
    { method: 'POST', url: '/admin/keys', payload: [1], code: 'invalid_type', param: null },
    { method: 'PATCH', url: `/admin/keys/${record.id}`, payload: { images_per_minute: 1.5 }, code: 'invalid_value', param: 'images_per_minute' },
    { method: 'PATCH', url: `/admin/keys/${record.id}`, payload: { metadata: { a: 1 } }, code: 'invalid_type', param: 'metadata' },
    { method: 'PATCH', url: `/admin/keys/${record.id}`, payload: { disabled: 'yes' }, code: 'invalid_type', param: 'disabled' }
  ]
  for (const c of cases) {
    const res = await app.inject({
      method: c.method,
      url: c.url,
      headers: { ...AUTH, 'content-type': 'application/json' },
      payload: JSON.stringify(c.payload)
    })
    t.equal(res.statusCode, 400, `${c.method} ${JSON.stringify(c.payload)}`)
    t.match(errorOf(res), { code: c.code, param: c.param, type: 'invalid_request_error' })
  }
  t.equal((await store.list()).length, 1, 'no refused create made a key')
  t.same((await store.get(record.id))?.metadata, {}, 'no refused update changed the key')

  const noBody = await app.inject({ method: 'POST', url: '/admin/keys', headers: AUTH })
  t.equal(noBody.statusCode, 400, 'no body at all')
  t.equal(errorOf(noBody).code, 'invalid_type')

  const badJson = await app.inject({
    method: 'POST',
    url: '/admin/keys',
    headers: { ...AUTH, 'content-type': 'application/json' },
    payload: '{"name":'
  })
  t.equal(badJson.statusCode, 400)
  t.equal(errorOf(badJson).code, 'invalid_json', 'the root scope\'s JSON parser, mapped by the error handler')

  for (const days of ['0', '367', 'x', '1.5']) {
    const res = await app.inject({ method: 'GET', url: `/admin/keys/${record.id}/usage?days=${days}`, headers: AUTH })
    t.equal(res.statusCode, 400, `days=${days}`)
    t.match(errorOf(res), { code: 'invalid_value', param: 'days' })
  }
  const twice = await app.inject({ method: 'GET', url: `/admin/keys/${record.id}/usage?days=1&days=2`, headers: AUTH })
  t.match(errorOf(twice), { code: 'invalid_value', param: 'days' }, 'a repeated days is refused')
})

t.test('a store that cannot answer: 503 service_unavailable', async (t) => {
  const store = new MemoryKeyStore()
  store.list = async () => {
    throw new StoreUnavailableError(new Error('redis down'))
  }
  const app = await build(TOKEN, store)
  t.teardown(() => app.close())
  const res = await app.inject({ method: 'GET', url: '/admin/keys', headers: AUTH })
  t.equal(res.statusCode, 503)
  t.equal(errorOf(res).code, 'service_unavailable')
  t.notOk(res.body.includes('redis down'), 'the cause stays in the log')
})
