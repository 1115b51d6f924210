import { readFileSync } from 'node:fs'
import t from 'tap'
import { CATALOGUE, GatewayError, type ErrorCode } from '../../src/errors/catalogue.js'

/* docs/errors.md is the catalogue's public face: this keeps its table and CATALOGUE in step. */

const docPath = new URL('../../docs/errors.md', import.meta.url)

interface Row {
  code: string
  status: number
  type: string
  when: string
}

function cells(line: string): string[] {
  return line
    .trim()
    .replace(/^\|/, '')
    .replace(/\|$/, '')
    .split('|')
    .map((cell) => cell.trim())
}

const unquote = (cell: string): string => cell.replace(/^`(.*)`$/, '$1')

/** The rows of the table whose header is `code | status | type | when`. */
function parseTable(markdown: string): Row[] {
  const lines = markdown.split('\n')
  const header = lines.findIndex((line) => line.trim().startsWith('|') && cells(line).join('|') === 'code|status|type|when')
  if (header === -1) throw new Error('docs/errors.md has no "code | status | type | when" table')
  const separator = cells(lines[header + 1] ?? '')
  if (separator.length !== 4 || !separator.every((cell) => /^:?-{3,}:?$/.test(cell))) throw new Error('no separator row')
  const rows: Row[] = []
  for (const line of lines.slice(header + 2)) {
    if (!line.trim().startsWith('|')) break
    const row = cells(line)
    if (row.length !== 4) throw new Error(`a row without 4 cells: ${line}`)
    const [code, status, type, when] = row.map(unquote) as [string, string, string, string]
    rows.push({ code, status: /^[0-9]{3}$/.test(status) ? Number(status) : Number.NaN, type, when })
  }
  return rows
}

const codes = Object.keys(CATALOGUE) as ErrorCode[]

t.test('docs/errors.md lists CATALOGUE exactly, in order', async (t) => {
  const markdown = readFileSync(docPath, 'utf8')
  const rows = parseTable(markdown)
  t.same(rows.map((row) => row.code), codes, 'the same codes in the same order')
  t.same(
    rows,
    codes.map((code) => ({ code, status: CATALOGUE[code].status, type: CATALOGUE[code].type, when: CATALOGUE[code].when })),
    'each row has the entry\'s status, type and when'
  )
  t.equal(new Set(rows.map((row) => row.code)).size, rows.length, 'no code twice')
  t.match(markdown, /application\/json/, 'the intro gives the Content-Type')
  t.match(markdown, /408, 409, 429/, 'the intro says which statuses the SDKs retry')
  t.match(markdown, /upstream_credentials_rejected/, 'the intro explains the upstream 401')
})

t.test('the table parser refuses what it should', async (t) => {
  t.throws(() => parseTable('# nothing\n'), /no "code \| status \| type \| when" table/)
  t.throws(() => parseTable('| code | status | type | when |\n| a | b |\n'), /no separator row/)
  t.same(parseTable('| code | status | type | when |\n|---|---|---|---|\n| `x` | 400 | `t` | w |\n\nafter\n'), [
    { code: 'x', status: 400, type: 't', when: 'w' }
  ])
})

t.test('every code: a GatewayError body has exactly the four keys', async (t) => {
  for (const code of codes) {
    const err = new GatewayError(code, 'm', { param: 'p' })
    const body = err.toBody()
    t.same(Object.keys(body), ['error'], `${code}: one top-level key`)
    t.same(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'], `${code}: four keys`)
    t.same(
      body,
      { error: { message: 'm', type: CATALOGUE[code].type, param: 'p', code } },
      `${code}: the values`
    )
    t.equal(err.status, CATALOGUE[code].status, `${code}: status`)
    t.same(JSON.parse(JSON.stringify(body)), body, `${code}: survives JSON`)
  }
})

t.test('status and type rules', async (t) => {
  for (const code of codes) {
    const { status, type } = CATALOGUE[code]
    // The 429s carry OpenAI's own types (the SDKs expose them as err.type); the rest follow the status.
    const expected = code === 'rate_limit_exceeded' ? 'requests' : code === 'insufficient_quota' ? 'insufficient_quota' : status >= 500 ? 'server_error' : 'invalid_request_error'
    t.equal(type, expected, `${code}: type follows status`)
  }
  const noParam = new GatewayError('invalid_json', 'bad').toBody()
  t.same(noParam, { error: { message: 'bad', type: 'invalid_request_error', param: null, code: 'invalid_json' } }, 'param defaults to null')
  const relayed = new GatewayError('upstream_error', 'x', { status: 429 })
  t.equal(relayed.status, 429, 'an upstream status is kept')
  t.equal(relayed.type, 'invalid_request_error', 'a relayed 4xx is a request error')
  t.equal(new GatewayError('upstream_error', 'x', { status: 503 }).type, 'server_error')
  const cause = new Error('root')
  t.equal(new GatewayError('internal_error', 'x', { cause }).cause, cause, 'the cause is kept')
  t.notOk('cause' in new GatewayError('internal_error', 'x').toBody().error, 'and never sent')
})
