import { readFileSync } from 'node:fs'
import t from 'tap'
import type { z } from 'zod'
import { configSchema } from '../../src/config/schema.js'

/** Every leaf of the config schema as a README path, e.g. `providers[].timeouts.headersMs`. */
function leafPaths(schema: z.core.$ZodType, prefix: string): string[] {
  const def = schema._zod.def as z.core.$ZodTypeDef & {
    innerType?: z.core.$ZodType
    in?: z.core.$ZodType
    element?: z.core.$ZodType
    shape?: Record<string, z.core.$ZodType>
  }
  switch (def.type) {
    case 'default':
    case 'prefault':
    case 'optional':
      return leafPaths(def.innerType as z.core.$ZodType, prefix)
    case 'pipe':
      return leafPaths(def.in as z.core.$ZodType, prefix)
    case 'array':
      return leafPaths(def.element as z.core.$ZodType, `${prefix}[]`)
    case 'object':
      return Object.entries(def.shape ?? {}).flatMap(([key, child]) => leafPaths(child, prefix === '' ? key : `${prefix}.${key}`))
    default:
      return [prefix]
  }
}

t.test('the README configuration table lists exactly the keys of the config schema', async (t) => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')
  const start = readme.indexOf('## Configuration')
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  const documented = [...section.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1])
  const schemaPaths = leafPaths(configSchema, '')
  t.ok(schemaPaths.length > 15, 'the walk found the schema')
  t.strictSame([...documented].sort(), [...schemaPaths].sort())
})
