import t, { type Test } from 'tap'
import { runKeysCommand, KEYS_USAGE } from '../../src/cli/keys-command.js'
import { digestOf } from '../../src/keys/key-material.js'
import { MemoryKeyStore } from '../../src/keys/memory-store.js'
import { RedisKeyStore } from '../../src/keys/redis-store.js'
import { createRedis } from '../../src/redis/client.js'
import type { KeyStore } from '../../src/keys/types.js'

/* `image-gateway keys ...` on a MemoryKeyStore, with its output captured. */

interface Run {
  code: number
  logs: string[]
  errors: string[]
  /** Everything printed, one string, to search for what must never be there. */
  text: string
}

async function run(store: KeyStore, ...args: string[]): Promise<Run> {
  const logs: string[] = []
  const errors: string[] = []
  const code = await runKeysCommand(args, store, { log: (line) => logs.push(line), error: (line) => errors.push(line) })
  return { code, logs, errors, text: [...logs, ...errors].join('\n') }
}

function onlyJson(t: Test, r: Run): Record<string, unknown> {
  t.equal(r.code, 0, `exit 0 (${r.errors.join(' ')})`)
  t.equal(r.logs.length, 1, 'one line of output')
  return JSON.parse(r.logs[0] ?? '') as Record<string, unknown>
}

async function created(store: MemoryKeyStore, ...flags: string[]): Promise<{ id: string; key: string }> {
  const r = await run(store, 'create', '--name', 'k', '--json', ...flags)
  if (r.code !== 0) throw new Error(r.errors.join('\n'))
  return JSON.parse(r.logs[0] ?? '') as { id: string; key: string }
}

t.test('create --json: one object with id and key first, every flag applied', async (t) => {
  const store = new MemoryKeyStore()
  const r = await run(
    store,
    'create',
    '--name',
    'ci bot',
    '--models',
    'gpt-image-1, dall-e-*',
    '--rpm',
    '60',
    '--images-per-minute',
    '10',
    '--concurrency',
    '2',
    '--budget-usd',
    '12.5',
    '--expires',
    '2030-01-01T00:00:00Z',
    '--json'
  )
  const body = onlyJson(t, r)
  t.same(Object.keys(body).slice(0, 2), ['id', 'key'])
  t.match(body, {
    id: /^key_/,
    key: /^igw_/,
    name: 'ci bot',
    models: ['gpt-image-1', 'dall-e-*'],
    rpm: 60,
    images_per_minute: 10,
    concurrency: 2,
    budget_usd: 12.5,
    spent_usd: 0,
    expires_at: '2030-01-01T00:00:00.000Z',
    disabled: false
  })
  t.notOk('digest' in body)
  const stored = await store.findByDigest(digestOf(String(body.key)))
  t.equal(stored?.id, body.id, 'the printed key is the stored key')
  t.equal(stored?.budgetMicroUsd, 12_500_000)
  t.same(r.errors, [])
})

t.test('create without --json prints the key once and says so', async (t) => {
  const store = new MemoryKeyStore()
  const r = await run(store, 'create', '--name', 'human')
  t.equal(r.code, 0)
  const [record] = await store.list()
  if (record === undefined) throw new Error('no key made')
  const keyLines = r.logs.filter((line) => line.includes('igw_'))
  t.equal(keyLines.length, 1, 'the key on one line')
  const key = /igw_[A-Za-z0-9_-]{43}/.exec(keyLines[0] ?? '')?.[0] ?? ''
  t.equal(digestOf(key), record.digest, 'and it is the key')
  t.ok(r.logs.some((line) => /not be shown again/.test(line)), 'says it will not be shown again')
  t.ok(r.logs.some((line) => line.includes(record.id)), 'names the id')
})

t.test('list, show, update and revoke never print the key or its digest', async (t) => {
  const store = new MemoryKeyStore()
  const { id, key } = await created(store, '--budget-usd', '5')
  const digest = digestOf(key)
  const runs = [
    await run(store, 'list'),
    await run(store, 'list', '--json'),
    await run(store, 'show', id),
    await run(store, 'show', id, '--json'),
    await run(store, 'update', id, '--rpm', '5'),
    await run(store, 'update', id, '--rpm', '6', '--json'),
    await run(store, 'usage', id),
    await run(store, 'usage', id, '--json'),
    await run(store, 'revoke', id),
    await run(store, 'revoke', id, '--json')
  ]
  for (const r of runs) {
    t.equal(r.code, 0, r.errors.join(' '))
    t.notOk(r.text.includes(key), 'no key')
    t.notOk(r.text.includes(digest), 'no digest')
    t.notOk(r.text.includes(key.slice(12)), 'not even the part after the display prefix')
  }
})

t.test('list: a table, or one JSON list object', async (t) => {
  const store = new MemoryKeyStore()
  t.same((await run(store, 'list')).logs, ['No keys.'])
  t.same(onlyJson(t, await run(store, 'list', '--json')), { object: 'list', data: [] })
  const a = await created(store, '--budget-usd', '10')
  await new Promise((resolve) => setTimeout(resolve, 2))
  const b = await created(store)
  await run(store, 'revoke', b.id)
  const human = await run(store, 'list')
  t.equal(human.logs.length, 3, 'a header and a line per key')
  t.match(human.logs[0], /^ID\s+PREFIX\s+STATUS\s+SPENT\s+MODELS\s+NAME$/)
  t.match(human.logs[1], new RegExp(`^${a.id}\\s+igw_\\S+\\s+active\\s+\\$0\\.00 / \\$10\\.00\\s+\\*\\s+k$`))
  t.match(human.logs[2], new RegExp(`^${b.id}\\s+\\S+\\s+revoked`))
  const json = onlyJson(t, await run(store, 'list', '--json')) as { data: { id: string }[] }
  t.same(json.data.map((k) => k.id), [a.id, b.id], 'oldest first')
})

t.test('show: human lines and JSON', async (t) => {
  const store = new MemoryKeyStore()
  const { id } = await created(store, '--rpm', '7', '--budget-usd', '0.011')
  const human = await run(store, 'show', id)
  t.equal(human.code, 0)
  t.ok(human.logs.includes(`id:                ${id}`))
  t.ok(human.logs.includes('rpm:               7'))
  t.ok(human.logs.includes('concurrency:       no limit'))
  t.ok(human.logs.includes('budget:            $0.011'), 'fractions of a cent are shown')
  t.ok(human.logs.includes('status:            active'))
  t.ok(human.logs.includes('expires:           never'))
  t.match(onlyJson(t, await run(store, 'show', id, '--json')), { id, rpm: 7, budget_usd: 0.011 })
})

t.test('update: every flag', async (t) => {
  const store = new MemoryKeyStore()
  const { id } = await created(store, '--rpm', '5', '--budget-usd', '3', '--expires', '2030-01-01T00:00:00Z', '--concurrency', '4')
  const r = await run(
    store,
    'update',
    id,
    '--name',
    'renamed',
    '--models',
    'gpt-image-1',
    '--rpm',
    'none',
    '--images-per-minute',
    '9',
    '--no-budget',
    '--no-expiry',
    '--disable',
    '--json'
  )
  t.match(onlyJson(t, r), {
    id,
    name: 'renamed',
    models: ['gpt-image-1'],
    rpm: null,
    images_per_minute: 9,
    concurrency: 4,
    budget_usd: null,
    expires_at: null,
    disabled: true
  })
  const human = await run(store, 'show', id)
  t.ok(human.logs.includes('status:            disabled'))

  t.match(onlyJson(t, await run(store, 'update', id, '--enable', '--budget-usd', '2.5', '--json')), { disabled: false, budget_usd: 2.5 })
  t.equal((await store.get(id))?.budgetMicroUsd, 2_500_000)
  t.match(onlyJson(t, await run(store, 'update', id, '--expires', '2000-01-01T00:00:00Z', '--json')), {
    expires_at: '2000-01-01T00:00:00.000Z'
  })
  t.ok((await run(store, 'show', id)).logs.includes('status:            expired'))

  const text = await run(store, 'update', id, '--concurrency', 'none')
  t.equal(text.code, 0)
  t.equal(text.logs[0], `Updated key ${id}.`)
  t.ok(text.logs.includes('concurrency:       no limit'))
})

t.test('revoke', async (t) => {
  const store = new MemoryKeyStore()
  const { id, key } = await created(store)
  const r = await run(store, 'revoke', id)
  t.equal(r.code, 0)
  t.equal(r.logs[0], `Revoked key ${id}.`)
  t.ok(r.logs.includes('status:            revoked'))
  const record = await store.findByDigest(digestOf(key))
  t.type(record?.revokedAt, 'string', 'revoked in the store')
  t.match(onlyJson(t, await run(store, 'revoke', id, '--json')), { id, revoked_at: record?.revokedAt })
})

t.test('usage: per day with totals, or JSON', async (t) => {
  const store = new MemoryKeyStore()
  const { id } = await created(store)
  const none = await run(store, 'usage', id)
  t.equal(none.code, 0)
  t.match(none.logs[0], /the last 30 days/)
  t.equal(none.logs[1], 'No usage.')

  const now = Date.now()
  await store.settle(id, 't1', { requests: 3, images: 4, inputTokens: 100, outputTokens: 200, costMicroUsd: 160_000 }, now)
  const human = await run(store, 'usage', id, '--days', '7')
  t.equal(human.code, 0)
  t.match(human.logs[0], /the last 7 days/)
  t.match(human.logs[1], /^DAY\s+REQUESTS\s+IMAGES\s+INPUT TOKENS\s+OUTPUT TOKENS\s+COST$/)
  t.match(human.logs[2], new RegExp(`^${new Date(now).toISOString().slice(0, 10)}\\s+3\\s+4\\s+100\\s+200\\s+\\$0\\.16$`))
  t.match(human.logs[3], /^total\s+3\s+4\s+100\s+200\s+\$0\.16$/)
  t.equal(human.logs.length, 4, 'days with no use are left out')

  const json = onlyJson(t, await run(store, 'usage', id, '--days', '2', '--json')) as {
    key_id: string
    data: unknown[]
    total: { cost_usd: number }
  }
  t.equal(json.key_id, id)
  t.equal(json.data.length, 2)
  t.equal(json.total.cost_usd, 0.16)
})

t.test('errors: messages on error, exit 2 for usage, 1 for not found', async (t) => {
  const store = new MemoryKeyStore()
  const { id } = await created(store)
  const missing = 'key_000000000000000000000000'

  const usageErrors: [string[], RegExp][] = [
    [[], /usage: image-gateway keys/],
    [['frobnicate'], /unknown subcommand 'frobnicate'/],
    [['constructor'], /unknown subcommand 'constructor'/],
    [['create'], /--name is required/],
    [['create', '--name'], /argument missing/],
    [['create', '--name', 'n', '--bogus'], /Unknown option '--bogus'/],
    [['create', '--name', 'n', '--rpm', '0'], /invalid --rpm "0": expected a positive integer\.$/],
    [['create', '--name', 'n', '--rpm', 'abc'], /invalid --rpm "abc"/],
    [['create', '--name', 'n', '--rpm', '0x10'], /invalid --rpm "0x10"/],
    [['create', '--name', 'n', '--concurrency', '1.5'], /invalid --concurrency "1.5"/],
    [['create', '--name', 'n', '--images-per-minute=-3'], /invalid --images-per-minute "-3"/],
    // parseArgs takes a value starting with a dash only in the --flag=value form.
    [['create', '--name', 'n', '--images-per-minute', '-3'], /argument is ambiguous/],
    [['create', '--name', 'n', '--budget-usd', 'ten'], /invalid --budget-usd "ten"/],
    [['create', '--name', 'n', '--budget-usd=-1'], /invalid --budget-usd "-1"/],
    [['create', '--name', 'n', '--expires', '2030-01-01'], /invalid --expires "2030-01-01": expected an ISO 8601 date-time/],
    [['create', '--name', 'n', '--models', 'a,,b'], /invalid --models "a,,b"/],
    [['create', '--name', ''], /invalid --name ""/],
    [['create', '--name', 'n', '--disable'], /Unknown option '--disable'/],
    [['create', '--name', 'n', 'extra'], /create takes no arguments/],
    [['list', 'extra'], /list takes no arguments/],
    [['show'], /show takes one key id/],
    [['show', id, id], /show takes one key id/],
    [['update', id], /nothing to change/],
    [['update', id, '--disable', '--enable'], /contradict/],
    [['update', id, '--no-budget', '--budget-usd', '1'], /contradict/],
    [['update', id, '--no-expiry', '--expires', '2030-01-01T00:00:00Z'], /contradict/],
    [['usage', id, '--days', '0'], /invalid --days "0": expected an integer from 1 to 366/],
    [['usage', id, '--days', '367'], /invalid --days "367"/]
  ]
  for (const [args, message] of usageErrors) {
    const r = await run(store, ...args)
    t.equal(r.code, 2, `exit 2: keys ${args.join(' ')}`)
    t.match(r.errors[0], message, `message: keys ${args.join(' ')}`)
    t.same(r.logs, [], 'nothing on the normal output')
  }

  for (const args of [['show', missing], ['update', missing, '--rpm', '1'], ['revoke', missing], ['usage', missing], ['show', missing, '--json']]) {
    const r = await run(store, ...args)
    t.equal(r.code, 1, `exit 1: keys ${args.join(' ')}`)
    t.same(r.errors, [`error: no key with id '${missing}'`])
    t.same(r.logs, [])
  }

  t.same((await store.list()).map((k) => k.id), [id], 'no failed command made a key')
  t.same(await store.get(id), (await store.list())[0], 'or changed one')

  const help = await run(store, 'help')
  t.equal(help.code, 0)
  t.same(help.logs, [KEYS_USAGE])
})

t.test('a store that cannot answer: exit 1 with its message', async (t) => {
  // A real Redis store pointed at a port nothing listens on.
  const store = new RedisKeyStore(createRedis('redis://127.0.0.1:1'), createRedis('redis://127.0.0.1:1', { role: 'subscriber' }))
  t.teardown(() => store.close())
  const r = await run(store, 'list')
  t.equal(r.code, 1)
  t.equal(r.errors.length, 1)
  t.match(r.errors[0], /^error: the key store is unavailable \(/)
})

t.test('anything else is a bug and is thrown to the caller', async (t) => {
  const store = new MemoryKeyStore()
  store.list = async () => {
    throw new Error('boom')
  }
  await t.rejects(run(store, 'list'), { message: 'boom' })
})
