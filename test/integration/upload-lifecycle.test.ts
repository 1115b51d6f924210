import { readdirSync, readlinkSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import t from 'tap'
import { json, startFakeUpstream } from '../helpers/fake-upstream.js'
import { eventually, startGateway } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startStack } from '../helpers/stack.js'

/** Spool files are unlinked at once; a leak would show as an open descriptor to a deleted file. */
function openSpoolFiles(): number {
  let count = 0
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).includes('image-gateway-')) count++
    } catch {
      // the descriptor closed while we looked
    }
  }
  return count
}

const big = makePng({ width: 64, height: 64, seed: 11, padToBytes: 6 * 1024 * 1024 })

t.test('a client that leaves mid-upload aborts the upstream request and frees the spool', async (t) => {
  const { upstream, gateway } = await startStack(t, { behaviour: json(200, { created: 1, data: [] }), gateway: { limits: { holdMemoryBytes: 64 * 1024 } } })
  // Model after the file, so the upload is being spooled to disk when the client goes.
  const form = buildMultipart([
    { name: 'image', filename: 'a.png', data: big },
    { name: 'prompt', value: 'p' },
    { name: 'model', value: 'gpt-image-1' }
  ])
  const req = httpRequest(`${gateway.url}/v1/images/edits`, {
    method: 'POST',
    headers: { 'content-type': form.contentType, 'content-length': String(form.body.length), authorization: `Bearer ${gateway.key}` }
  })
  req.on('error', () => undefined)
  req.write(form.body.subarray(0, 3 * 1024 * 1024))
  t.ok(await eventually(() => openSpoolFiles() === 1), 'the held upload went to a temporary file')
  req.destroy()
  t.ok(await eventually(() => openSpoolFiles() === 0), 'its descriptor is closed once the client is gone')
  t.equal(upstream.received.length, 0, 'nothing was sent upstream for a request that never routed')

  // Now with the model first: the upstream request is live when the client leaves.
  const routedFirst = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: big }
  ])
  const second = httpRequest(`${gateway.url}/v1/images/edits`, {
    method: 'POST',
    headers: { 'content-type': routedFirst.contentType, 'content-length': String(routedFirst.body.length), authorization: `Bearer ${gateway.key}` }
  })
  second.on('error', () => undefined)
  second.write(routedFirst.body.subarray(0, 2 * 1024 * 1024))
  const seen = await upstream.nthRequest(1)
  t.ok(await eventually(() => seen.bytes > 0))
  second.destroy()
  await seen.done
  t.notOk(seen.complete, 'the upstream never got a whole request')
  t.ok(seen.aborted)
  const line = await eventually(() => gateway.logs().some((l) => l.msg === 'request' && l.status === 499))
  if (!line) console.error('LOGS', gateway.logText())
  t.ok(line, 'logged as 499, client closed')
})

t.test('an upstream that answers before reading the whole upload: the client gets that answer', async (t) => {
  const upstream = await startFakeUpstream(async (_request, response) => {
    const body = JSON.stringify({ error: { message: 'Request Entity Too Large', type: 'invalid_request_error', param: null, code: 'request_too_large' } })
    // It answers at once but, like most servers, keeps reading what the client still sends.
    response.writeHead(413, { 'content-type': 'application/json' })
    response.end(body)
  })
  const gateway = await startGateway({ providers: { up: upstream.baseUrl } })
  t.teardown(async () => {
    await gateway.close()
    await upstream.close()
  })
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: big }
  ])
  const answer = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: [form.body.subarray(0, 1024 * 1024), form.body.subarray(1024 * 1024)]
  })
  t.equal(answer.status, 413)
  t.match(answer.json(), { error: { code: 'request_too_large', param: null } })
  t.ok(await eventually(() => openSpoolFiles() === 0))
})
