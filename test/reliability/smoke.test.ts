import t from 'tap'
import { startStack } from '../helpers/stack.js'
import { PROVIDER_KEY } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { resetAfterBody } from './harness/faults.js'
import { assertError, assertNothingLeaked, portOf, rssAfterGcMb, spoolFiles } from './harness/invariants.js'

t.test('#29 smoke', async (t) => {
  const { upstream, gateway } = await startStack(t, { behaviour: resetAfterBody })
  const rss = rssAfterGcMb()
  const spool = spoolFiles()
  const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { authorization: `Bearer ${gateway.key}`, 'content-type': 'application/json' },
    body: [Buffer.from(JSON.stringify({ model: 'dall-e-2', prompt: 'x' }))]
  })
  const body = answer.body.toString()
  t.comment(answer.status, body, answer.headers['x-should-retry'])
  assertError(t, { status: answer.status, body }, 502)
  t.equal(upstream.received.length, 1)
  await assertNothingLeaked(t, { gateway, ports: [portOf(gateway.url), portOf(upstream.url)], received: upstream.received, secrets: [gateway.key, PROVIDER_KEY], bodies: [body], spoolBaseline: spool, rssBaselineMb: rss })
})
