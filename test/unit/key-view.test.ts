import t, { type Test } from 'tap'
import { GatewayError, type ErrorCode } from '../../src/errors/catalogue.js'
import { compareByCreation, keyView, parseKeyInput, parseUsageDays, usageView } from '../../src/keys/key-view.js'
import type { KeyRecord } from '../../src/keys/types.js'

/* The admin API's view of a key (never the digest) and its input rules, shared with the CLI. */

const record: KeyRecord = {
  id: 'key_0123456789abcdef01234567',
  name: 'ci',
  prefix: 'igw_Ab12Cd34',
  digest: 'a'.repeat(64),
  models: ['gpt-image-*'],
  rpm: 60,
  imagesPerMinute: null,
  concurrency: 2,
  budgetMicroUsd: 12_500_000,
  expiresAt: null,
  disabled: false,
  createdAt: '2030-01-01T00:00:00.000Z',
  revokedAt: null,
  metadata: { team: 'web' }
}

function thrown(fn: () => void): unknown {
  try {
    fn()
  } catch (err) {
    return err
  }
  return null
}

function refuses(t: Test, body: unknown, mode: 'create' | 'update', code: ErrorCode, param: string | null): void {
  const err = thrown(() => parseKeyInput(body, mode))
  t.ok(err instanceof GatewayError, `${JSON.stringify(body)} is refused`)
  if (!(err instanceof GatewayError)) return
  t.equal(err.code, code, `${JSON.stringify(body)}: code`)
  t.equal(err.param, param, `${JSON.stringify(body)}: param`)
  t.equal(err.status, 400)
}

t.test('keyView: snake_case, USD, never the digest', async (t) => {
  const view = keyView(record, 1_234_567)
  t.same(view, {
    id: record.id,
    name: 'ci',
    prefix: 'igw_Ab12Cd34',
    models: ['gpt-image-*'],
    rpm: 60,
    images_per_minute: null,
    concurrency: 2,
    budget_usd: 12.5,
    spent_usd: 1.234567,
    expires_at: null,
    disabled: false,
    created_at: record.createdAt,
    revoked_at: null,
    metadata: { team: 'web' }
  })
  t.notOk(JSON.stringify(view).includes(record.digest), 'no digest in the JSON')
  t.equal(keyView({ ...record, budgetMicroUsd: null }, 0).budget_usd, null, 'no budget is null')
  // A field added to KeyRecord later must not leak through the view.
  const extended = { ...record, secret: 'leak' } as KeyRecord
  t.notOk(JSON.stringify(keyView(extended, 0)).includes('leak'), 'only the listed fields')
  view.models.push('x')
  t.same(record.models, ['gpt-image-*'], 'the view does not share arrays with the record')
})

t.test('usageView: cost in USD, totals summed in micro-USD', async (t) => {
  const usage = usageView([
    { day: '2030-01-02', requests: 2, images: 3, inputTokens: 10, outputTokens: 20, costMicroUsd: 100_000 },
    { day: '2030-01-01', requests: 1, images: 1, inputTokens: 5, outputTokens: 6, costMicroUsd: 200_000 }
  ])
  t.same(usage.data[0], { day: '2030-01-02', requests: 2, images: 3, input_tokens: 10, output_tokens: 20, cost_usd: 0.1 })
  // 0.1 + 0.2 in floats is 0.30000000000000004; summed as integers it is 0.3.
  t.same(usage.total, { requests: 3, images: 4, input_tokens: 15, output_tokens: 26, cost_usd: 0.3 })
  t.equal(usage.object, 'list')
  t.same(usageView([]).total, { requests: 0, images: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0 })
})

t.test('compareByCreation: oldest first, then by id', async (t) => {
  const a = { ...record, id: 'key_b', createdAt: '2030-01-01T00:00:00.000Z' }
  const b = { ...record, id: 'key_a', createdAt: '2030-01-02T00:00:00.000Z' }
  const c = { ...record, id: 'key_c', createdAt: '2030-01-01T00:00:00.000Z' }
  t.same([b, c, a].sort(compareByCreation).map((r) => r.id), ['key_b', 'key_c', 'key_a'])
})

t.test('parseUsageDays: 1..366, 30 by default', async (t) => {
  t.equal(parseUsageDays(undefined), 30)
  t.equal(parseUsageDays('1'), 1)
  t.equal(parseUsageDays('366'), 366)
  for (const bad of ['0', '367', '-1', '1.5', 'abc', '', ' 7', '1e2', '99999']) {
    const err = thrown(() => parseUsageDays(bad))
    t.ok(err instanceof GatewayError && err.code === 'invalid_value' && err.param === 'days', `refuses ${JSON.stringify(bad)}`)
  }
})

t.test('parseKeyInput create: every field, snake_case to the store', async (t) => {
  t.same(
    parseKeyInput(
      {
        name: 'ci',
        models: ['gpt-image-1', 'dall-e-*'],
        rpm: 60,
        images_per_minute: 10,
        concurrency: 2,
        budget_usd: 12.5,
        expires_at: '2030-06-01T12:00:00+02:00',
        metadata: { team: 'web' }
      },
      'create'
    ),
    {
      name: 'ci',
      models: ['gpt-image-1', 'dall-e-*'],
      rpm: 60,
      imagesPerMinute: 10,
      concurrency: 2,
      budgetMicroUsd: 12_500_000,
      expiresAt: '2030-06-01T10:00:00.000Z',
      metadata: { team: 'web' }
    }
  )
  t.same(parseKeyInput({ name: 'only a name' }, 'create'), { name: 'only a name' }, 'absent fields stay absent')
  t.same(
    parseKeyInput({ name: 'n', rpm: null, images_per_minute: null, concurrency: null, budget_usd: null, expires_at: null }, 'create'),
    { name: 'n', rpm: null, imagesPerMinute: null, concurrency: null, budgetMicroUsd: null, expiresAt: null },
    'null means no limit'
  )
  t.equal(parseKeyInput({ name: 'x'.repeat(200) }, 'create').name.length, 200, '200 characters is the most')
})

t.test('parseKeyInput: budget in USD becomes rounded integer micro-USD', async (t) => {
  const budget = (usd: number): number | null | undefined => parseKeyInput({ name: 'n', budget_usd: usd }, 'create').budgetMicroUsd
  t.equal(budget(0.1), 100_000, '0.1 * 1e6 is 100000.00000000001 in floats')
  t.equal(budget(0.0000004), 0, 'below half a micro-dollar rounds down')
  t.equal(budget(0.0000005), 1, 'half a micro-dollar rounds up')
  t.equal(budget(1.2345678), 1_234_568)
  t.equal(budget(0), 0, 'a zero budget is allowed (the key can spend nothing)')
  t.ok(Number.isInteger(budget(19.99)), 'always an integer')
})

t.test('parseKeyInput update: only what is given, disabled allowed', async (t) => {
  t.same(parseKeyInput({}, 'update'), {}, 'an empty patch changes nothing')
  t.same(parseKeyInput({ disabled: true }, 'update'), { disabled: true })
  t.same(parseKeyInput({ rpm: null, expires_at: null, budget_usd: null }, 'update'), { rpm: null, expiresAt: null, budgetMicroUsd: null })
  t.same(parseKeyInput({ name: 'renamed', models: ['*'] }, 'update'), { name: 'renamed', models: ['*'] })
  const patch = parseKeyInput({ rpm: 5 }, 'update')
  t.notOk(Object.hasOwn(patch, 'name'), 'no undefined fields that would overwrite the record')
})

t.test('parseKeyInput refusals: code and param', async (t) => {
  refuses(t, {}, 'create', 'missing_required_parameter', 'name')
  refuses(t, { rpm: 5 }, 'create', 'missing_required_parameter', 'name')
  refuses(t, { name: '' }, 'create', 'invalid_value', 'name')
  refuses(t, { name: 'x'.repeat(201) }, 'create', 'invalid_value', 'name')
  refuses(t, { name: 'a\nb' }, 'create', 'invalid_value', 'name')
  refuses(t, { name: 5 }, 'create', 'invalid_type', 'name')
  refuses(t, { name: null }, 'update', 'invalid_type', 'name')
  refuses(t, { name: 'n', disabled: true }, 'create', 'invalid_value', 'disabled')
  refuses(t, { name: 'n', budget: 5 }, 'create', 'invalid_value', 'budget')
  refuses(t, { imagesPerMinute: 5 }, 'update', 'invalid_value', 'imagesPerMinute')

  refuses(t, { models: [] }, 'update', 'invalid_value', 'models')
  refuses(t, { models: [''] }, 'update', 'invalid_value', 'models')
  refuses(t, { models: ['a b'] }, 'update', 'invalid_value', 'models')
  refuses(t, { models: 'gpt-image-1' }, 'update', 'invalid_type', 'models')
  refuses(t, { models: [1] }, 'update', 'invalid_type', 'models')

  for (const field of ['rpm', 'images_per_minute', 'concurrency']) {
    refuses(t, { [field]: 0 }, 'update', 'invalid_value', field)
    refuses(t, { [field]: -1 }, 'update', 'invalid_value', field)
    refuses(t, { [field]: 1.5 }, 'update', 'invalid_value', field)
    refuses(t, { [field]: 2 ** 60 }, 'update', 'invalid_value', field)
    refuses(t, { [field]: '5' }, 'update', 'invalid_type', field)
    refuses(t, { [field]: true }, 'update', 'invalid_type', field)
  }

  refuses(t, { budget_usd: -0.01 }, 'update', 'invalid_value', 'budget_usd')
  refuses(t, { budget_usd: 1e12 }, 'update', 'invalid_value', 'budget_usd')
  refuses(t, { budget_usd: '10' }, 'update', 'invalid_type', 'budget_usd')

  refuses(t, { expires_at: '2030-01-01' }, 'update', 'invalid_value', 'expires_at')
  refuses(t, { expires_at: '2030-01-01T00:00:00' }, 'update', 'invalid_value', 'expires_at')
  refuses(t, { expires_at: '2030-13-01T00:00:00Z' }, 'update', 'invalid_value', 'expires_at')
  refuses(t, { expires_at: 'tomorrow' }, 'update', 'invalid_value', 'expires_at')
  refuses(t, { expires_at: 1893456000 }, 'update', 'invalid_type', 'expires_at')

  refuses(t, { metadata: { team: 1 } }, 'update', 'invalid_type', 'metadata')
  refuses(t, { metadata: ['a'] }, 'update', 'invalid_type', 'metadata')
  refuses(t, { metadata: { '': 'x' } }, 'update', 'invalid_value', 'metadata')
  refuses(t, { disabled: 'yes' }, 'update', 'invalid_type', 'disabled')

  for (const body of [null, [], 'name', 5, undefined]) refuses(t, body, 'update', 'invalid_type', null)
})

t.test('parseKeyInput messages name the field and what it takes', async (t) => {
  const err = thrown(() => parseKeyInput({ rpm: 0 }, 'update'))
  t.equal((err as Error).message, "Invalid value for 'rpm': expected a positive integer or null.")
  const missing = thrown(() => parseKeyInput({}, 'create'))
  t.equal((missing as Error).message, "Missing required parameter: 'name'.")
  const unknown = thrown(() => parseKeyInput({ name: 'n', budget: 1 }, 'create'))
  t.equal((unknown as Error).message, "Unknown parameter: 'budget'.")
})
